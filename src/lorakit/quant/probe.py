"""``quantize="auto"``: which mode is fastest on this machine, measured once and remembered.

Why measure: the ranking differs between CPUs. On an AVX2 EPYC bf16 was ~2x slower than fp32 per decode
step; with AVX512-BF16 (or AMX) it is faster. The probe times one pass over SmolLM2-135M's projection
shapes (576x576, 1536x576, 576x1536) with 8 rows, a decode step of batch 8, for fp32 (``none``), bf16 and
int8, round after round (so that other work slows all alike), and keeps the median.

``auto`` picks among ``AUTO_MODES`` only, the modes that keep outputs close to fp32 (SmolLM2: 98% top-1
agreement for bf16). int8 is measured and cached too, as it is the fastest kernel, but its per-call
activation rounding changes SmolLM2's outputs (52% top-1 agreement), and the 4-bit modes dequantize
before an fp32 matmul (never faster): those are asked for by name. bf16 must beat fp32 by ``MARGIN``.

On a machine with a GPU the probe runs on the GPU, where ``train``, ``generate`` and ``serve`` put the model
(int8 is the CPU's kernel and is left out there). The result is cached in ``$LORAKIT_HOME/quant-probe.json``
(default ``~/.cache/lorakit``), keyed by CPU model, vector extensions, torch version and thread count, or by
the GPU's name and torch version; ``choose_mode(refresh=True)`` measures again.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import torch

from ..files import atomic_write
from ..hardware import cpu_flags, cpu_model, resolve_device
from .formats import FORMATS

CANDIDATES: tuple[str, ...] = ("none", "bf16", "int8")  # measured
AUTO_MODES: tuple[str, ...] = ("none", "bf16")  # chosen from
SHAPES: tuple[tuple[int, int], ...] = ((576, 576), (1536, 576), (576, 1536))
MARGIN = 0.10  # a quantized mode is picked only when at least 10% faster than fp32: rounding costs accuracy
CACHE_NAME = "quant-probe.json"


def probe_key(device: torch.device | str | None = None) -> str:
    """What the ranking depends on: the CPU, its vector extensions, PyTorch and the threads it uses; on a GPU,
    the GPU's name and PyTorch."""
    device = resolve_device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} | torch {torch.__version__}"
    return f"{cpu_model()} | {' '.join(cpu_flags())} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def cache_path() -> Path:
    """In lorakit's cache root, found as ``models.registry.lorakit_home`` finds it (not imported from there:
    ``models.load`` imports this package)."""
    return Path(os.environ.get("LORAKIT_HOME") or Path.home() / ".cache" / "lorakit").expanduser() / CACHE_NAME


def measure_modes(modes: tuple[str, ...] = CANDIDATES, rows: int = 8, rounds: int = 7,
                  calls: int = 5, device: torch.device | str = "cpu") -> dict[str, float]:
    """Milliseconds for one pass over ``SHAPES`` per mode on ``device`` (median of ``rounds``); a mode this
    build or device cannot run (int8 off the CPU) is left out."""
    gen = torch.Generator().manual_seed(0)
    weights = [(torch.randn(o, i, generator=gen) * i ** -0.5).to(device) for o, i in SHAPES]
    inputs = [torch.randn(rows, i, generator=gen).to(device) for _, i in SHAPES]
    sync = (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else (lambda: None)
    kernels = {}
    for mode in modes:
        try:
            kernels[mode] = [(lambda x, w=w: x @ w.T) if mode == "none" else FORMATS[mode](w).matmul
                             for w in weights]
        except (RuntimeError, ValueError):
            continue
    times: dict[str, list[float]] = {m: [] for m in kernels}
    with torch.inference_mode():
        for _ in range(rounds + 1):  # the first round warms up (allocations, kernel choice) and is dropped
            for mode, fns in kernels.items():
                sync()
                start = time.perf_counter()
                for _ in range(calls):
                    for fn, x in zip(fns, inputs, strict=True):
                        fn(x)
                sync()
                times[mode].append((time.perf_counter() - start) / calls * 1e3)
    return {m: statistics.median(t[1:]) for m, t in times.items()}


def pick(ms: dict[str, float]) -> str:
    """The fastest of ``AUTO_MODES``, unless it beats fp32 (``none``) by less than ``MARGIN``."""
    best = min((m for m in ms if m in AUTO_MODES), key=ms.__getitem__, default="none")
    if "none" in ms and best != "none" and ms[best] > ms["none"] * (1 - MARGIN):
        return "none"
    return best


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold a lock file beside ``path``: processes started together (torchrun's ranks) take turns, so the
    first measures and the others read its answer, and every rank quantizes alike (DDP needs the same
    modules everywhere). Without a writable folder or ``fcntl`` (Windows), no lock."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115  (closed below)
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def choose_mode(refresh: bool = False, device: torch.device | str | None = None) -> str:
    """The mode ``auto`` stands for on ``device`` (default: ``hardware.resolve_device``'s, the GPU if any): from
    the cache, else measured (about a second) and cached."""
    device = resolve_device(device)
    path, key = cache_path(), probe_key(device)
    with _exclusive(path):
        return _cached_or_measured(path, key, device, refresh)


def _cached_or_measured(path: Path, key: str, device: torch.device, refresh: bool) -> str:
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(key)
    if not refresh and isinstance(entry, dict) and entry.get("mode") in AUTO_MODES:
        return entry["mode"]
    ms = measure_modes(device=device)
    mode = pick(ms)
    cache[key] = {"mode": mode, "ms": {m: round(v, 4) for m, v in ms.items()},
                  "measured": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(cache, indent=1) + "\n").encode())
    except OSError:  # a read-only home: measure again next time rather than fail
        pass
    return mode
