"""Atomic HTTP(S) downloads of the official data files, for machines that are online.

A file is written to a temporary name in its destination folder (``files.atomic_file``), checked (non-empty,
complete, parseable) and only then renamed into place, so an interrupted or failed download never leaves a
file that a loader would take for the real one.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..files import atomic_file

DEFAULT_TIMEOUT = 60.0
_CHUNK = 1 << 16


class DownloadError(OSError):
    """A file could not be fetched or what came back is not a valid data file."""


def join_url(base_url: str, relpath: str) -> str:
    """``base_url`` + ``relpath`` with each path segment percent-encoded."""
    return base_url.rstrip("/") + "/" + urllib.parse.quote(relpath.lstrip("/"))


def fetch_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    validate: Callable[[Path], object] | None = None,
    overwrite: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download ``url`` to ``dest`` atomically; an existing ``dest`` is kept unless ``overwrite``.

    ``validate`` is called on the finished temporary file and should raise (e.g. DataFormatError) if the
    content is not a usable data file, such as an HTML error page served with status 200.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        return dest
    with atomic_file(dest) as tmp:  # data folders are often shared: it gets a plain open's permissions
        with tmp.open("wb") as out:
            written, expected = _copy_url(url, out, timeout)
        if expected is not None and written != expected:
            raise DownloadError(f"{url}: truncated download ({written} of {expected} bytes)")
        if written == 0:
            raise DownloadError(f"{url}: empty response")
        if validate is not None:
            try:
                validate(tmp)
            except (ValueError, OSError) as err:
                raise DownloadError(f"{url}: downloaded file is not valid: {err}") from err
    return dest


def fetch_files(
    base_url: str,
    folder: Path,
    relpaths: list[str],
    *,
    validate: Callable[[Path], object],
    overwrite: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Path]:
    """``fetch_file`` for each of ``relpaths`` under ``base_url`` into the same place under ``folder``."""
    return [fetch_file(join_url(base_url, rel), folder / rel, validate=validate, overwrite=overwrite, timeout=timeout)
            for rel in relpaths]


def _copy_url(url: str, out, timeout: float) -> tuple[int, int | None]:
    """Stream ``url`` into ``out``; returns (bytes written, Content-Length or None)."""
    request = urllib.request.Request(url, headers={"User-Agent": "lorakit-data/0.1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            written = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                written += len(chunk)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise DownloadError(f"{url}: cannot connect ({err.reason})") from err
    except TimeoutError as err:
        raise DownloadError(f"{url}: timed out after {timeout:g} s") from err
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(f"{url}: download failed ({err!r})") from err
    return written, expected
