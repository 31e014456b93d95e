"""Request metrics in Prometheus' text exposition format (no client library needed: a few counters).

Why here and not in a dependency: the server exports a handful of counters, gauges and one latency
histogram; writing the text format takes less code than wiring a registry.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Counters updated from the HTTP handlers and the engine thread (under one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (endpoint, status) -> count
        self.latency_buckets: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.adapter_loads = 0
        self.adapter_unloads = 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, str(status))] += 1
            buckets = self.latency_buckets.setdefault(endpoint, [0] * len(BUCKETS))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self.latency_sum[endpoint] += seconds
            self.latency_count[endpoint] += 1

    def prefill(self, tokens: int) -> None:
        with self._lock:
            self.prompt_tokens += tokens

    def generated(self, tokens: int) -> None:
        with self._lock:
            self.generated_tokens += tokens

    def adapter_loaded(self) -> None:
        with self._lock:
            self.adapter_loads += 1

    def adapter_unloaded(self) -> None:
        with self._lock:
            self.adapter_unloads += 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A value read when the metrics are scraped (queue length, adapters in memory)."""
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            lines += ["# HELP lorakit_requests_total HTTP requests by endpoint and status code.",
                      "# TYPE lorakit_requests_total counter"]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f"lorakit_requests_total{_labels(endpoint=endpoint, status=status)} {count}")
            lines += ["# HELP lorakit_request_seconds Request latency, until the last byte of the response.",
                      "# TYPE lorakit_request_seconds histogram"]
            for endpoint, buckets in sorted(self.latency_buckets.items()):
                for bound, count in zip(BUCKETS, buckets, strict=True):
                    lines.append(f"lorakit_request_seconds_bucket{_labels(endpoint=endpoint, le=str(bound))} {count}")
                total = self.latency_count[endpoint]
                lines.append(f"lorakit_request_seconds_bucket{_labels(endpoint=endpoint, le='+Inf')} {total}")
                seconds = self.latency_sum[endpoint]
                lines.append(f"lorakit_request_seconds_sum{_labels(endpoint=endpoint)} {seconds:.6f}")
                lines.append(f"lorakit_request_seconds_count{_labels(endpoint=endpoint)} {total}")
            for name, help_text, value in (
                ("lorakit_prompt_tokens_total", "Prompt tokens run through the model.", self.prompt_tokens),
                ("lorakit_generated_tokens_total", "Tokens generated.", self.generated_tokens),
                ("lorakit_adapter_loads_total", "Adapters attached to the model.", self.adapter_loads),
                ("lorakit_adapter_unloads_total", "Adapters removed on request.", self.adapter_unloads),
            ):
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read()}"]
        return "\n".join(lines) + "\n"
