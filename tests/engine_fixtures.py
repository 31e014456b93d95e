"""Helpers for tests that steer the server's engine thread: hold it, and wait for a state without sleeping
for a guessed time."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from lorakit.serve.engine import Engine


def deadline_poll(condition: Callable[[], bool], seconds: float = 10.0, what: str = "condition") -> None:
    """Wait until ``condition()`` holds, at most ``seconds`` (polling, not sleeping for a guessed time)."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {seconds} s waiting for: {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def paused(engine: Engine, hold_seconds: float = 30.0) -> Iterator[None]:
    """Hold the engine thread (a command that waits) until the block ends; what is sent meanwhile queues and
    then starts as one batch."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(hold_seconds)

    engine._command(hold)
    assert entered.wait(10), "the engine thread did not pick up the pause"
    try:
        yield
    finally:
        release.set()
