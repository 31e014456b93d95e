"""Which matmul kernel is fastest for a frozen, quantized weight on this machine: a decode step's shapes.

Every candidate multiplies the same 8 rows (a decode step of batch 8) by SmolLM2-135M's weight shapes:
fp32 ``F.linear``; lorakit.quant's formats (bf16; int8 weights with activations quantized per call by
PyTorch's fbgemm ``quantized.linear_dynamic``; NF4, dequantized then fp32); the same int8 kernel on
oneDNN's engine; int8 weight-only (``torch._weight_int8pack_mm``); int4 weight-only tinygemm for CPU
(``torch._weight_int4pack_mm_for_cpu``, group 64); and, where installed (``pip install lorakit[quant]``),
torchao 0.18's ``quantize_`` configs (int8 dynamic, int8 weight-only), its NF4 tensor and bitsandbytes'
NF4 ``matmul_4bit`` CPU path. Candidates are run in turn, round after round (so that load from other work
hits all alike); the median of the rounds is reported, with the output error relative to fp32.

    .venv/bin/python benchmarks/quant_kernels.py            # ~3 minutes on 2 cores
    .venv/bin/python benchmarks/quant_kernels.py --quick    # ~30 s: fewer rounds, no LM head

"step" sums one decoder layer's seven projections (q, o: 576x576; k, v: 192x576; gate, up: 1536x576; down:
576x1536) x 30 layers, plus the tied LM head (49152x576) once: the matmul part of one SmolLM2 decode step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from lorakit.hardware import describe
from lorakit.quant import FORMATS

Kernel = Callable[[torch.Tensor], torch.Tensor]
SHAPES = {"q,o 576x576": (576, 576, 2), "k,v 192x576": (192, 576, 2), "gate,up 1536x576": (1536, 576, 2),
          "down 576x1536": (576, 1536, 1), "LM head 49152x576": (49152, 576, 0)}  # (out, in, uses per layer)
LAYERS = 30


# --- PyTorch's own kernels --------------------------------------------------------------------------------
def fp32(w: torch.Tensor) -> Kernel:
    return lambda x: F.linear(x, w)


def lorakit_format(mode: str) -> Callable[[torch.Tensor], Kernel]:
    """lorakit.quant's own formats: int8 (fbgemm ``linear_dynamic``), nf4 (dequantize + fp32), bf16."""
    return lambda w: FORMATS[mode](w).matmul


def int8_onednn(w: torch.Tensor) -> Kernel:
    """As lorakit's int8 (per-channel int8 weight, activations quantized per call) on oneDNN's engine."""
    torch.backends.quantized.engine = "onednn"
    try:
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-8).double()
        qw = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None)
    finally:
        torch.backends.quantized.engine = "x86"
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, False)


def int8_weight_only(w: torch.Tensor) -> Kernel:
    scale = w.abs().amax(dim=1) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return lambda x: torch._weight_int8pack_mm(x, q, scale)


def int4_weight_only(w: torch.Tensor, group: int = 64) -> Kernel:
    """Asymmetric 4-bit per group of ``group`` inputs, in the layout of PyTorch's CPU tinygemm kernel."""
    out_f, in_f = w.shape
    g = w.reshape(out_f, in_f // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(1e-8)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).reshape(out_f, in_f).to(torch.int32)
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    zero = lo + 8 * scale  # tinygemm: w = (q - 8) * scale + zero
    scales_zeros = torch.stack([scale.T, zero.T], dim=-1).contiguous()  # (in/group, out, 2)
    return lambda x: torch._weight_int4pack_mm_for_cpu(x, packed, group, scales_zeros)


# --- third-party packages (optional) ----------------------------------------------------------------------
def torchao(config_name: str) -> Callable[[torch.Tensor], Kernel]:
    def build(w: torch.Tensor) -> Kernel:
        import torchao.quantization as q

        linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        linear.weight.data = w.clone()
        q.quantize_(linear, getattr(q, config_name)())
        return linear
    return build


def torchao_nf4(w: torch.Tensor) -> Kernel:
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4, to_nf4

    nf4 = to_nf4(w, 64, 256)
    return lambda x: linear_nf4(x, nf4)


def bnb_nf4(w: torch.Tensor) -> Kernel:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    q, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    return lambda x: bnb.matmul_4bit(x, q.t(), state)


CANDIDATES: dict[str, tuple[Callable[[torch.Tensor], Kernel], str | None]] = {
    "fp32": (fp32, None),
    "bf16": (lorakit_format("bf16"), None),
    "int8-dyn fbgemm": (lorakit_format("int8"), None),
    "int8-dyn onednn": (int8_onednn, None),
    "int8 w-only": (int8_weight_only, None),
    "int4 w-only g64": (int4_weight_only, None),
    "nf4": (lorakit_format("nf4"), None),
    "torchao int8-dyn": (torchao("Int8DynamicActivationInt8WeightConfig"), "torchao"),
    "torchao int8 w-only": (torchao("Int8WeightOnlyConfig"), "torchao"),
    "torchao nf4": (torchao_nf4, "torchao"),
    "bnb nf4": (bnb_nf4, "bitsandbytes"),
}


def available(package: str | None) -> str | None:
    """None when usable, else why not."""
    if package is None:
        return None
    try:
        __import__(package)
    except Exception as err:  # ImportError, or a broken binary
        return f"{type(err).__name__}: {str(err)[:80]}"
    return None


def measure(kernels: dict[str, Kernel], x: torch.Tensor, rounds: int, calls: int) -> dict[str, float]:
    """Median ms per call; each round runs every kernel ``calls`` times, in turn."""
    times: dict[str, list[float]] = {name: [] for name in kernels}
    with torch.inference_mode():
        for fn in kernels.values():  # warm-up: first calls allocate and pick kernels
            fn(x)
        for _ in range(rounds):
            for name, fn in kernels.items():
                start = time.perf_counter()
                for _ in range(calls):
                    fn(x)
                times[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def relative_error(fn: Kernel, ref: torch.Tensor, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return ((fn(x).float() - ref).norm() / ref.norm()).item()


def cpu_flags() -> str:
    """The flags that decide which kernels are fast: AVX2/FMA, AVX-512 (VNNI, BF16), AMX."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    keep = [f for f in flags if f in ("avx2", "fma", "f16c") or f.startswith(("avx512", "amx", "avx_vnni"))]
    return " ".join(keep) or "none of avx2/avx512/amx"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8, help="rows per matmul (a decode step of batch 8)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=20, help="calls per round (the LM head: a quarter)")
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="run these candidates (fp32 always)")
    p.add_argument("--quick", action="store_true", help="3 rounds of 5 calls, no LM head")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 is steadier on a busy machine)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.calls = 3, 5
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {describe()}; cpu flags: {cpu_flags()}; torch {torch.__version__} "
          f"(capability {torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads; python "
          f"{platform.python_version()}; load average {os.getloadavg()}", flush=True)
    names = ["fp32", *[n for n in (args.only or CANDIDATES) if n != "fp32"]]
    skipped = {n: why for n in names if (why := available(CANDIDATES[n][1]))}
    for n, why in skipped.items():
        print(f"skipped {n}: {why}")
    names = [n for n in names if n not in skipped]
    torch.manual_seed(0)
    table: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, float]] = {}
    for label, (out_f, in_f, _) in SHAPES.items():
        if args.quick and out_f > 10_000:
            continue
        w = torch.randn(out_f, in_f) * in_f ** -0.5
        x = torch.randn(args.rows, in_f)
        kernels, errors[label] = {}, {}
        ref = F.linear(x, w)
        for n in names:
            try:
                kernels[n] = CANDIDATES[n][0](w)
                errors[label][n] = relative_error(kernels[n], ref, x)
            except Exception as err:  # a kernel this build or CPU lacks: say so, measure the rest
                print(f"{label}: {n} failed: {type(err).__name__}: {str(err)[:120]}")
                kernels.pop(n, None)
        calls = max(1, args.calls // 4) if out_f > 10_000 else args.calls
        table[label] = measure(kernels, x, args.rounds, calls)
        print(f"{label}: " + ", ".join(f"{n} {ms:.3f} ms" for n, ms in table[label].items()), flush=True)
    print_table(table, errors, names)
    print(f"load average at the end {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "ms": table, "rel_error": errors}, indent=2))
    return 0


def print_table(table: dict[str, dict[str, float]], errors: dict[str, dict[str, float]], names: list[str]) -> None:
    """Markdown: ms per call (x fp32 in brackets: above 1 is faster), then the step and the output error."""
    cols = [n for n in names if all(n in row for row in table.values())]
    print("\n| matmul (out x in), 8 rows | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for label, row in table.items():
        cells = [f"{row[n]:.3f} ({row['fp32'] / row[n]:.2f}x)" for n in cols]
        print(f"| {label} | " + " | ".join(cells) + " |")
    step = {n: sum(table[lab][n] * (SHAPES[lab][2] * LAYERS or 1) for lab in table) for n in cols}
    print("| step: 7 projections x 30 layers + head | " + " | ".join(
        f"{step[n]:.1f} ({step['fp32'] / step[n]:.2f}x)" for n in cols) + " |")
    worst = {n: max(errors[lab].get(n, float("nan")) for lab in table) for n in cols}
    print("| output error vs fp32 (relative, worst shape) | " + " | ".join(f"{worst[n]:.4f}" for n in cols) + " |")
    best = min(cols, key=lambda n: step[n])
    print(f"fastest step: {best} ({step['fp32'] / step[best]:.2f}x fp32)")


if __name__ == "__main__":
    sys.exit(main())
