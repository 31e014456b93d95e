"""argparse types the commands share: a number is checked when the command line is parsed, so a bad value
fails in one line naming the flag before any model loads (instead of a traceback, or a silent slice such as
``inputs[:-1]`` for ``--limit -1``, after it)."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # what argparse names in its message
    return parse


def output_file(text: str) -> str:
    """An argparse ``type`` for a file a command writes at its end: refused now, not after the work, when it
    is a folder or its nearest existing folder does not take new files (missing folders below it are
    created by the writer). Probed with a temporary file that is removed at once."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lorakit-probe-"):
            pass
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {err.strerror or err} in {folder}") from None
    return text
