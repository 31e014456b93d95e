"""What a number was measured on: the CPU model (as ``lscpu`` prints it), its vector extensions, and the GPU.

Why this exists: the same code runs 4-5x slower on an AVX2-only CPU than on one with AVX-512 and AMX, and
the fastest kernel differs between them, so every measured number is printed next to the machine it
came from (benchmarks, training summaries).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# the extensions that decide which kernels are fast here (bf16 / int8 matmuls)
_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo_field(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").split("\n"):
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        return None
    return None


def cpu_model() -> str:
    """The CPU's model name, the one ``lscpu`` shows as "Model name"."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> list[str]:
    """Which of the kernel-deciding vector extensions this CPU has."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [f for f in _FLAGS if f in flags]


def resolve_device(name: str | torch.device | None = None, *, quantize: str = "none") -> torch.device:
    """Where a model runs: the device asked for (``--device``), else the GPU when there is one (this process's
    under torchrun, ``LOCAL_RANK``), except an int8 base, whose kernel is the CPU's (fbgemm). generate,
    predict and serve place the model there, and ``quantize="auto"`` measures there."""
    if name is None:
        if quantize == "int8" or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this PyTorch ({torch.__version__}) sees no CUDA GPU")
    return device


def describe() -> str:
    """One line: CPU model, usable cores, vector extensions, torch build and GPU if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    flags = cpu_flags()
    text = f"{cpu_model()}, {cores} cores, {' '.join(flags) if flags else 'no avx2/avx512/amx'}"
    text += f", torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text
