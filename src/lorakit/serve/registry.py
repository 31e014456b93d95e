"""The adapters a server may use: names mapped to folders inside one adapter folder, read off the request path.

Why a registry apart from the model: reading an adapter (disk, safetensors, checks) happens on a loader
thread while the model keeps serving; only attaching the tensors to the model happens on the engine
thread, between two forward passes, and takes milliseconds. Names and paths are checked so that nothing
outside the adapter folder can ever be read.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..adapters.io import CONFIG_NAME, read_adapter
from ..lora.config import LoraConfig

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class AdapterNotFound(KeyError):
    """No adapter of that name in the adapter folder (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "adapter not found"


class AdapterRefused(ValueError):
    """The name, path or files of an adapter cannot be served (HTTP 400); the message says why."""


@dataclass
class ReadAdapter:
    """An adapter read from disk and checked, ready to be attached to the model."""

    name: str
    folder: Path
    config: LoraConfig
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] | None
    labels: list[str] | None = None


@dataclass
class _Entry:
    folder: Path
    pending: Future | None = None
    waiters: list[Callable[[ReadAdapter | BaseException], None]] = field(default_factory=list)


def check_name(name: str) -> str:
    """An adapter name is one path component of letters, digits, ``_ . -``; nothing that could climb out."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise AdapterRefused(f"adapter name {name!r} is not allowed: use 1-128 letters, digits, '_', '.', '-' "
                             "(starting with a letter or digit, no '..')")
    return name


class AdapterRegistry:
    """Adapter names -> folders under ``root``, and reads in the background.

    ``root/<name>/adapter_config.json`` makes ``<name>`` available; ``register`` adds a name for another
    folder under ``root``. ``read_async`` reads and checks an adapter on a loader thread and calls back the
    waiters (once per read, however many requests asked for it meanwhile).
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
        candidate = Path(path)
        if candidate.is_absolute():
            raise AdapterRefused(f"adapter path {str(path)!r} must be relative to the adapter folder")
        resolved = (self.root / candidate).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise AdapterRefused(f"adapter path {str(path)!r} leaves the adapter folder; refused")
        return resolved

    def names(self) -> list[str]:
        """Every adapter that can be requested: sub-folders holding an adapter config, and registered ones."""
        found = set()
        for path in self.root.glob(f"*/{CONFIG_NAME}"):
            name = path.parent.name
            try:
                if NAME_RE.match(name) and ".." not in name and self.inside(name):
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
            raise AdapterNotFound(f"no adapter named {name!r} in {self.root}")
        return folder

    def register(self, name: str, path: str) -> Path:
        """Make ``name`` refer to the adapter in ``path`` (relative to the adapter folder)."""
        check_name(name)
        folder = self.inside(path)
        if not (folder / CONFIG_NAME).is_file():
            raise AdapterNotFound(f"no {CONFIG_NAME} in {path!r} under {self.root}")
        with self._lock:
            self._aliases[name] = folder
        return folder

    # --- reading
    def read(self, name: str) -> ReadAdapter:
        """Read and check adapter ``name`` now (on the calling thread)."""
        folder = self.folder(name)
        try:
            config, tensors, meta = read_adapter(folder)
        except (OSError, ValueError) as err:
            raise AdapterRefused(f"adapter {name!r} cannot be read: {err}") from err
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
    import json

    path = folder / "labels.json"
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise AdapterRefused(f"{path}: not a JSON list of label names: {err}") from err
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise AdapterRefused(f"{path}: expected a JSON list of label names")
    return labels
