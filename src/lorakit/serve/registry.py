"""The adapters a server may use: names mapped to folders inside one adapter folder, read off the request path.

Why a registry apart from the model: reading an adapter (disk, safetensors, checks) happens on a loader
thread while the model keeps serving; only attaching the tensors to the model happens on the engine
thread, between two forward passes, and takes milliseconds. Names and paths are checked so that nothing
outside the adapter folder can ever be read.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapters.io import CONFIG_NAME, LEGACY_WEIGHTS_NAME, WEIGHTS_NAME, read_adapter
from ..data.chat import CHAT_TEMPLATE_NAME, adapter_chat_template
from ..lora.config import LoraConfig
from ..metrics.labels import LABELS_NAME

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # always fullmatch: "$" would accept "name\n"
MAX_PATH_CHARS = 1024
MAX_REGISTERED = 1024  # names a client may add with /v1/adapters/load {name, path}: /v1/models lists them all
# every file a read opens
ADAPTER_FILES = (CONFIG_NAME, WEIGHTS_NAME, LEGACY_WEIGHTS_NAME, LABELS_NAME, CHAT_TEMPLATE_NAME)


class AdapterNotFound(KeyError):
    """No adapter of that name in the adapter folder (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "adapter not found"


class AdapterRefused(ValueError):
    """The name, path or files of an adapter cannot be served (HTTP 400); the message says why."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param  # the request field at fault when it is not the one naming the adapter ("path")


class AdapterConflict(ValueError):
    """The name already means another adapter (HTTP 409): a name keeps its folder for the server's life."""


@dataclass
class ReadAdapter:
    """An adapter read from disk and checked, ready to be attached to the model."""

    name: str
    folder: Path
    config: LoraConfig
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] | None
    labels: list[str] | None = None
    plan: Any = None  # laid out for the served model on the loader thread (``AdapterPool.plan``), when it was


@dataclass
class _Entry:
    folder: Path
    pending: Future | None = None
    waiters: list[Callable[[ReadAdapter | BaseException], None]] = field(default_factory=list)


def _shown(value: object, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: error messages echo client input, never all of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def is_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None and ".." not in name


def check_name(name: str) -> str:
    """An adapter name is one path component of letters, digits, ``_ . -``; nothing that could climb out."""
    if not is_name(name):
        raise AdapterRefused(f"adapter name {_shown(name)} is not allowed: use 1-128 letters, digits, '_', '.', "
                             "'-' (starting with a letter or digit, no '..')")
    return name


def check_path_text(path: str) -> str:
    """A client's ``path``: printable text of a sane length (no NUL, newline or other control character,
    which the file system would reject with an error of its own, or log oddly)."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS:
        raise AdapterRefused(f"adapter path must be 1-{MAX_PATH_CHARS} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in path):
        raise AdapterRefused(f"adapter path {_shown(path)} holds a control character or invalid unicode; refused")
    return path


class AdapterRegistry:
    """Adapter names -> folders under ``root``, and reads in the background.

    ``root/<name>/adapter_config.json`` makes ``<name>`` available; ``register`` adds a name for another
    folder under ``root``. ``read_async`` reads and checks an adapter on a loader thread and calls back the
    waiters (once per read, however many requests asked for it meanwhile). ``check`` runs on that thread
    too, after the read: the server plans the adapter against its model there, so that nothing depending on
    a file's contents (target regexes included) runs on the engine thread.
    """

    def __init__(self, root: str | Path, check: Callable[[ReadAdapter], None] | None = None,
                 workers: int = 2) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"adapter folder {str(self.root)!r} does not exist")
        self.check = check
        self._lock = threading.Lock()
        self._aliases: dict[str, Path] = {}
        self._entries: dict[str, _Entry] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lorakit-adapter-reader")

    # --- names and folders
    def inside(self, path: str | Path) -> Path:
        """``path`` (relative to the adapter folder) resolved, symlinks included; refused if it leaves it."""
        check_path_text(str(path))
        candidate = Path(path)
        if candidate.is_absolute():
            raise AdapterRefused(f"adapter path {_shown(str(path))} must be relative to the adapter folder")
        try:
            resolved = (self.root / candidate).resolve()
        except (OSError, ValueError) as err:  # a symlink loop, a name too long for the file system
            raise AdapterRefused(f"adapter path {_shown(str(path))} cannot be resolved: {err}") from err
        if not self._contains(resolved):
            raise AdapterRefused(f"adapter path {_shown(str(path))} leaves the adapter folder; refused")
        return resolved

    def _contains(self, resolved: Path) -> bool:
        return resolved == self.root or self.root in resolved.parents

    def _check_files(self, name: str, folder: Path) -> None:
        """Refuse files inside an adapter's folder that are symlinks leading out of the adapter folder: the
        folder being inside is not enough, every file a read opens must be too."""
        for file in ADAPTER_FILES:
            path = folder / file
            try:
                if not path.is_symlink():
                    continue
                resolved = path.resolve()
            except (OSError, ValueError) as err:
                raise AdapterRefused(f"adapter {name!r}: {file} cannot be resolved: {err}") from err
            if not self._contains(resolved):
                raise AdapterRefused(f"adapter {name!r}: {file} is a symlink that leaves the adapter folder; "
                                     "refused")

    def names(self) -> list[str]:
        """Every adapter that can be requested: sub-folders holding an adapter config, and registered ones."""
        found = set()
        for path in self.root.glob(f"*/{CONFIG_NAME}"):
            name = path.parent.name
            try:
                if is_name(name) and self.inside(name):
                    found.add(name)
            except AdapterRefused:  # a symlink out of the folder: never offered
                continue
        with self._lock:
            found |= set(self._aliases)
        return sorted(found)

    def folder(self, name: str) -> Path:
        """The folder of adapter ``name``; ``AdapterNotFound`` when there is none, ``AdapterRefused`` for
        names that are not allowed or resolve outside the adapter folder (symlinks)."""
        check_name(name)
        with self._lock:
            alias = self._aliases.get(name)
        folder = alias if alias is not None else self.inside(name)
        if not (folder / CONFIG_NAME).is_file():
            raise AdapterNotFound(f"no adapter named {name!r} in the adapter folder")
        return folder

    def register(self, name: str, path: str) -> bool:
        """Make ``name`` refer to the adapter in ``path`` (relative to the adapter folder); whether the name
        is new (the caller then ``forget``s it if loading fails, so a failed load leaves no name behind).

        A name means one folder for the server's life: a name that is already a sub-folder's or already
        registered for another folder raises ``AdapterConflict``; the same folder again is fine. Otherwise
        any client could make a name everyone uses serve other weights."""
        check_name(name)
        try:
            folder = self.inside(path)
        except AdapterRefused as err:
            err.param = "path"
            raise
        if not (folder / CONFIG_NAME).is_file():
            missing = AdapterNotFound(f"no {CONFIG_NAME} in {_shown(path)} under the adapter folder")
            missing.param = "path"
            raise missing
        with self._lock:
            current = self._aliases.get(name)
            if current is None:
                own = self.root / name
                if own.exists() or own.is_symlink():
                    current = self.inside(name)
            if current is not None and current != folder:
                raise AdapterConflict(f"adapter name {name!r} already names another adapter folder; a name keeps "
                                      "its folder for the server's life: pick a new name")
            new = name not in self._aliases and current is None
            if new and len(self._aliases) >= MAX_REGISTERED:
                raise AdapterRefused(f"{MAX_REGISTERED} names are registered with a path already (the most this "
                                     "server keeps); reuse one of them", param="name")
            if new:
                self._aliases[name] = folder
        return new

    def forget(self, name: str) -> None:
        """Drop a name ``register`` added (its load failed)."""
        with self._lock:
            self._aliases.pop(name, None)

    # --- reading
    def chat_template(self, name: str) -> str | None:
        """The chat template adapter ``name`` was trained with (its ``chat_template.jinja``), or None."""
        folder = self.folder(name)
        self._check_files(name, folder)
        try:
            return adapter_chat_template(folder)
        except (OSError, ValueError) as err:
            raise AdapterRefused(f"adapter {name!r}: {err}") from err

    def read(self, name: str) -> ReadAdapter:
        """Read and check adapter ``name`` now (on the calling thread)."""
        folder = self.folder(name)
        self._check_files(name, folder)
        try:
            config, tensors, meta = read_adapter(folder)
        except (OSError, ValueError) as err:
            raise AdapterRefused(f"adapter {name!r} cannot be read: {err}") from err
        except Exception as err:  # anything a hostile file makes the reader raise is the file's fault: a 400
            raise AdapterRefused(f"adapter {name!r} cannot be read: {type(err).__name__}: {err}") from err
        adapter = ReadAdapter(name, folder, config, tensors, meta, _labels(folder))
        if config.bias != "none":
            raise AdapterRefused(f"adapter {name!r} trains biases (bias={config.bias!r}): those live in the shared "
                                 "base model, so serving it would change every other request; refused")
        if self.check is not None:
            self.check(adapter)
        return adapter

    def read_async(self, name: str, done: Callable[[ReadAdapter | BaseException], None]) -> None:
        """Read ``name`` on a loader thread; ``done`` gets the adapter or the error. Requests for an adapter
        being read join the read in flight."""
        with self._lock:
            entry = self._entries.setdefault(name, _Entry(self.root / name))
            entry.waiters.append(done)
            if entry.pending is not None:
                return
            entry.pending = self._pool.submit(self._read_and_notify, name)

    def _read_and_notify(self, name: str) -> None:
        try:
            result: ReadAdapter | BaseException = self.read(name)
        except BaseException as err:  # handed to the waiters, who turn it into an HTTP error
            result = err
        with self._lock:
            entry = self._entries.pop(name)
        for waiter in entry.waiters:
            waiter(result)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _labels(folder: Path) -> list[str] | None:
    """Label names of a classification adapter: ``labels.json`` (a JSON list) beside its files, if any."""
    path = folder / LABELS_NAME
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise AdapterRefused(f"{path}: not a JSON list of label names: {err}") from err
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise AdapterRefused(f"{path}: expected a JSON list of label names")
    return labels
