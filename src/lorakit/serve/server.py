"""Building a server from a base model and an adapter folder, and running it (foreground or in a thread).

``serve_in_thread`` exists for tests and benchmarks: a real uvicorn server on 127.0.0.1 (an ephemeral port),
stopped cleanly afterwards.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .app import create_app
from .engine import Engine
from .http import DEFAULT_MAX_BODY_BYTES
from .metrics import Metrics
from .registry import AdapterRegistry


def build_engine(model: nn.Module, tokenizer, adapters: str | Path, *, max_loaded: int = 8, max_batch: int = 16,
                 max_queue: int = 256) -> Engine:
    """An engine (not started) serving ``model`` and the adapters in folder ``adapters``."""
    registry = AdapterRegistry(adapters)
    engine = Engine(model, tokenizer, registry, max_loaded=max_loaded, max_batch=max_batch, max_queue=max_queue,
                    metrics=Metrics())
    # the loader threads plan each adapter against the model right after reading it: whatever depends on
    # the file (target regexes, tensor checks, the copy to the device) never runs on the engine thread
    registry.check = engine.pool.plan
    return engine


@dataclass
class RunningServer:
    """A server running on a background thread; ``stop()`` shuts down HTTP, then the engine."""

    url: str
    engine: Engine
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.engine.stop()


def serve_in_thread(engine: Engine, base_name: str, host: str = "127.0.0.1", port: int = 0, *,
                    api_key: str | None = None, admin_token: str | None = None,
                    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                    chat_template: str | os.PathLike[str] | None = None) -> RunningServer:
    """Start ``engine`` and a uvicorn server for it on ``host:port`` (0: any free port); returns once it accepts
    connections. ``api_key``, ``admin_token``, ``max_body_bytes``, ``chat_template``: as ``create_app``."""
    import uvicorn

    app = create_app(engine, base_name, api_key=api_key, admin_token=admin_token, max_body_bytes=max_body_bytes,
                     chat_template=chat_template)
    engine.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="lorakit-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            engine.stop()
            raise RuntimeError("the HTTP server did not start")
        time.sleep(0.02)
    bound_host, bound_port = sock.getsockname()[:2]
    return RunningServer(f"http://{bound_host}:{bound_port}", engine, server, thread)
