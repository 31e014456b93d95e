"""Server metrics for Prometheus, through the official ``prometheus-client``.

Each server gets its own registry (several servers in one process, as in the tests, do not collide);
handlers and the engine thread update it, ``render`` gives the text exposition format for ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# the ``*_created`` series only say when a counter was first made: noise for a single server
prometheus_client.disable_created_metrics()

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Request counts and latency by endpoint, token and adapter counters, and gauges read when scraped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter("lorakit_requests", "HTTP requests by endpoint and status code.",
                                 ["endpoint", "status"], registry=r)
        self._latency = Histogram("lorakit_request_seconds", "Request latency, until the last byte of the response.",
                                  ["endpoint"], buckets=BUCKETS, registry=r)
        self._prompt = Counter("lorakit_prompt_tokens", "Prompt tokens run through the model.", registry=r)
        self._generated = Counter("lorakit_generated_tokens", "Tokens generated.", registry=r)
        self._loads = Counter("lorakit_adapter_loads", "Adapters attached to the model.", registry=r)
        self._unloads = Counter("lorakit_adapter_unloads", "Adapters removed on request.", registry=r)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self._requests.labels(endpoint=endpoint, status=str(status)).inc()
        self._latency.labels(endpoint=endpoint).observe(seconds)

    def prefill(self, tokens: int) -> None:
        self._prompt.inc(tokens)

    def generated(self, tokens: int) -> None:
        self._generated.inc(tokens)

    def adapter_loaded(self) -> None:
        self._loads.inc()

    def adapter_unloaded(self) -> None:
        self._unloads.inc()

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read when the metrics are scraped (queue length, adapters in memory)."""
        Gauge(name, help_text, registry=self.registry).set_function(read)

    def render(self) -> str:
        return generate_latest(self.registry).decode()
