"""Writing files so that readers never see half of one: written aside, flushed, then renamed into place."""

from __future__ import annotations

import os
import tempfile
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
