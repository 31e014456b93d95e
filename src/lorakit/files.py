"""Writing files and folders so that readers never see half of one: written aside, flushed, then renamed
into place.

The one implementation of "build aside, then rename" for the package: ``atomic_file`` / ``atomic_write`` for
one file, ``atomic_folder`` for a folder (adapters, converted models, the tokenized-data cache, training
results), ``recover_folder`` for what a killed ``atomic_folder`` left behind, ``build_stamped_folder`` for a
cache folder marked with what it was built from. Checkpoints keep their own
staging because every process of a ``torchrun`` writes into one (see ``train.checkpoint``).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def first_sentence(err: BaseException, limit: int = 200) -> str:
    """The first sentence of an error's message, for a one-line error about a file that could not be read:
    safetensors' and the unpickler's own messages run over many lines, and ``torch.load``'s goes on to advise
    unpickling with ``weights_only=False``, which lorakit never does."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:limit]


def strict_json(value: Any, indent: int | None = 2) -> str:
    """``value`` as JSON that every parser reads: a NaN or infinite float (a collapsed run's correlation)
    becomes ``null``, where ``json.dumps`` would write ``NaN``, which jq and JavaScript refuse. For report
    files read by other tools; files lorakit reads back itself keep Python's JSON."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=indent, allow_nan=False)


def folder_bytes(folder: str | os.PathLike) -> int:
    """Bytes on disk of every file under ``folder`` (an adapter or a model as saved)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary file beside ``path``; when the ``with`` block succeeds it is flushed to disk,
    given the permissions a plain ``open`` would give and renamed onto ``path``; on an error it is removed
    and ``path`` is untouched. The caller writes (and may check) the temporary file however it likes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data reaches the disk before the name does
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` in one step, with the permissions a plain ``open`` would give."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


_held = threading.local()  # the lock files this thread holds: a nested folder_lock on one of them is a no-op


def _lock_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.lock"


@contextmanager
def folder_lock(dest: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive right to build or recover ``dest`` (a ``flock`` on ``.<name>.lock`` beside it).

    Why: two processes building one folder at once (two runs converting the model cache on first use, two
    test workers) must not take each other's staging folder for a dead process's leftovers. The kernel
    drops the lock when its holder dies, so whoever holds it knows every staging folder beside ``dest`` is
    a dead one's. Held by a thread, it is re-entered without waiting (``atomic_folder`` inside
    ``folder_lock`` to check ``dest`` and build it in one turn). The lock file is removed on release, so
    nothing stays beside ``dest``; a waiter that then finds its file unlinked tries again on the new one.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    path = _lock_path(dest)
    key = os.path.abspath(path)
    held: set[str] | None = getattr(_held, "paths", None)
    if held is None:
        held = _held.paths = set()
    if key in held:
        yield
        return
    fd = _acquire(path)
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)
        path.unlink(missing_ok=True)  # while still locked: a waiter on this file sees it gone and retries
        os.close(fd)


def _acquire(path: Path) -> int:
    """An open descriptor holding ``flock(LOCK_EX)`` on the file that is at ``path`` now."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:  # its holder removed it on release
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)


@contextmanager
def atomic_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Build a folder aside and put it in place of ``dest`` only when the ``with`` block succeeds.

    Yields an empty staging folder beside ``dest``. On success an existing ``dest`` is renamed aside, the
    staging folder renamed to ``dest`` and the old copy removed; on an error the staging folder is removed
    and ``dest`` is untouched. A process killed between the two renames leaves ``dest`` missing and its
    previous copy as ``.<name>.old-*``; ``recover_folder`` (called here first) puts it back. Builds of one
    ``dest`` take turns (``folder_lock``), so the last one to finish is what stays, whole.
    """
    dest = Path(dest)
    with folder_lock(dest):
        recover_folder(dest)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        old = None
        try:
            os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes it private
            yield staging
            if dest.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
                os.replace(dest, old)  # an empty folder is replaced by a rename on POSIX
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if old is not None and dest.exists():  # stopped before the first rename
                shutil.rmtree(old, ignore_errors=True)
            elif old is not None:  # stopped between the renames: put the previous copy back
                os.replace(old, dest)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def recover_folder(dest: str | os.PathLike) -> list[Path]:
    """Undo what a killed ``atomic_folder`` left: a missing ``dest`` gets its previous copy back; staging
    folders and old copies beside it are removed. Returns what was removed.

    Runs under ``folder_lock``, so a staging folder it sees is never one that a live process is writing.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    with folder_lock(dest):
        olds = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds and not dest.exists():
            os.replace(olds.pop(), dest)
        removed = [*olds, *dest.parent.glob(f".{dest.name}.partial-*")]
        for leftover in removed:
            shutil.rmtree(leftover, ignore_errors=True)
    return removed


def stamped_folder_is_complete(folder: str | os.PathLike, stamp: dict[str, Any], marker: str) -> bool:
    """True only for a folder ``build_stamped_folder`` finished with this very ``stamp`` in ``marker``."""
    try:
        return json.loads((Path(folder) / marker).read_text("utf-8")) == stamp
    except (OSError, ValueError):
        return False


def build_stamped_folder(dest: str | os.PathLike, write: Callable[[Path], None], stamp: dict[str, Any],
                         marker: str) -> None:
    """Run ``write`` into a staging folder, write ``stamp`` (what it was built from) as ``marker``, then put it
    in place of ``dest`` (``atomic_folder``).

    Why: a cache build killed half-way must never leave a folder that later loads. Readers only ever see no
    folder, an old one or a finished one (with ``marker``). Processes building at once take turns
    (``folder_lock``): the second finds the first one's result and keeps it.
    """
    with folder_lock(dest):
        if stamped_folder_is_complete(dest, stamp, marker):  # another process finished while this one waited
            return
        with atomic_folder(dest) as staging:  # a partial, outdated or foreign folder is replaced
            write(staging)
            (staging / marker).write_text(json.dumps(stamp), "utf-8")
