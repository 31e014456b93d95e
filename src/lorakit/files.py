"""Writing files so that readers never see half of one: written aside, flushed, then renamed into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def folder_bytes(folder: str | os.PathLike) -> int:
    """Bytes on disk of every file under ``folder`` (an adapter or a model as saved)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` in one step, with the permissions a plain ``open`` would give."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Build a folder aside and put it in place of ``dest`` only when the ``with`` block succeeds.

    Yields an empty staging folder beside ``dest``. On success an existing ``dest`` is renamed aside, the
    staging folder renamed to ``dest`` and the old copy removed; on an error the staging folder is removed
    and ``dest`` is untouched. A process killed between the two renames leaves ``dest`` missing and its
    previous copy as ``.<name>.old-*``; ``recover_folder`` (called here first) puts it back.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(dest)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes it private
        yield staging
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old)  # an empty folder is replaced by a rename on POSIX
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_folder(dest: str | os.PathLike) -> None:
    """Undo what a killed ``atomic_folder`` left: a missing ``dest`` gets its previous copy back; staging
    folders and old copies beside it are removed."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    olds = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not dest.exists():
        os.replace(olds.pop(), dest)
    for leftover in [*olds, *dest.parent.glob(f".{dest.name}.partial-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
