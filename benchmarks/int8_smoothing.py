"""Can int8 keep SmolLM2's outputs? SmoothQuant-style smoothing measured against lorakit's plain int8.

lorakit's ``int8`` mode rounds each layer's input to 8 bits with one scale per call (PyTorch's fbgemm
``linear_dynamic``), and SmolLM2's inputs have outlier channels, so its top-1 agreement with fp32 is about
0.51 (docs/quantization.md). SmoothQuant (Xiao et al. 2023) moves part of each input channel's range into
the weight: ``y = (W diag(s)) (x / s)`` with ``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)``, the channel
maxima taken on calibration text. This script measures what that buys, per calibration set and alpha, and
(``--per-row``) with one activation scale per row instead of per call, a kernel fbgemm's dynamic linear does
not offer (simulated here with one call per row: a quality bound, not a speed). Exploratory: it is not a
lorakit mode. Same model and prompts as ``quant_speed.py``'s quality part (logits of SmolLM2-135M + a fresh
r=8 q,v LoRA at every position of 16 E2E dev prompts, against fp32).

    LORAKIT_DATA=../shared/data .venv/bin/python benchmarks/int8_smoothing.py --alphas 0.5 0.65 0.8 --per-row
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from generate_speed import build_model
from quant_speed import against_fp32

from lorakit.hardware import describe
from lorakit.quant import quantize_model
from lorakit.quant.formats import Int8Weight
from lorakit.quant.model import quant_plan
from lorakit.tasks import get_task

# calibration text that is not E2E: what a user without task data would have
GENERIC = ["The quick brown fox jumps over the lazy dog. " * 3,
           "In 1492, Columbus sailed the ocean blue. Paris is the capital of France, and Berlin of Germany.",
           "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
           "Question: What is the boiling point of water? Answer: 100 degrees Celsius at sea level.",
           "The restaurant serves Italian food near the river; prices are moderate and families are welcome."]


class SmoothedInt8(Int8Weight):
    """int8 of ``W diag(s)``, its input divided by ``s`` before the kernel (``s``: one value per input channel)."""

    def __init__(self, weight: torch.Tensor, s: torch.Tensor | None, per_row: bool) -> None:
        super().__init__(weight if s is None else weight * s)
        self.register_buffer("inverse", None if s is None else (1 / s).float())
        self.per_row = per_row

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.inverse is None else x * self.inverse
        if not self.per_row:
            return super().matmul(x)
        rows = x.reshape(-1, x.shape[-1]).float()
        out = [torch.ops.quantized.linear_dynamic(r[None].contiguous(), self.packed, self.reduce_range) for r in rows]
        return torch.cat(out).reshape(*x.shape[:-1], -1).to(x.dtype)


def channel_peaks(model: torch.nn.Module, tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """Each int8 layer's largest |input| per channel over ``texts`` (fp32 model)."""
    peaks: dict[str, torch.Tensor] = {}

    def hook(path: str):
        def record(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).abs().amax(0)
            peaks[path] = torch.maximum(peaks[path], x) if path in peaks else x
        return record

    handles = [m.register_forward_hook(hook(p)) for p, m, _ in quant_plan(model, "int8")]
    try:
        with torch.no_grad():
            model(**tokenizer(texts, return_tensors="pt", padding=True))
    finally:
        for handle in handles:
            handle.remove()
    return peaks


def agreement(model, batch, mask, ref, peaks: dict[str, torch.Tensor] | None, alpha: float, per_row: bool):
    quantized = copy.deepcopy(model)
    stored = {}
    for path, module, _ in quant_plan(quantized, "int8"):
        w = module.weight.detach().float()
        s = None if peaks is None else (peaks[path].clamp_min(1e-5).pow(alpha)
                                        / w.abs().amax(0).clamp_min(1e-5).pow(1 - alpha)).clamp_min(1e-5)
        stored[path] = SmoothedInt8(w, s, per_row)
    quantize_model(quantized, "int8", stored=stored)
    with torch.no_grad():
        return against_fp32(quantized(**batch).logits.float(), ref, mask)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", help="dataset root (default $LORAKIT_DATA)")
    p.add_argument("--prompts", type=int, default=16, help="E2E dev prompts scored (the first N)")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.65, 0.8])
    p.add_argument("--per-row", action="store_true", help="also one activation scale per row (slow: a quality bound)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {describe()}; torch threads={torch.get_num_threads()}", flush=True)
    model, tokenizer = build_model(args.model)
    sources = [get_task("e2e").prompt(ex.source) for ex in get_task("e2e").examples("dev", args.data)]
    batch = tokenizer(sources[:args.prompts], return_tensors="pt", padding=True)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = model(**batch).logits.float()
    calibrations = {"E2E dev prompts 100-131 (not the scored ones)": sources[100:132],
                    "generic English and code": GENERIC}
    print("| int8 activation scale | smoothing calibrated on | alpha | logits relative error | top-1 agreement |")
    print("| --- | --- | ---: | ---: | ---: |")
    for per_row in [False, True] if args.per_row else [False]:
        scale = "per row (simulated)" if per_row else "per call (lorakit's kernel)"
        err, agree = agreement(model, batch, mask, ref, None, 0.0, per_row)
        print(f"| {scale} | none (plain int8) | | {err:.4f} | {agree:.3f} |", flush=True)
        for name, texts in calibrations.items():
            peaks = channel_peaks(model, tokenizer, texts)
            for alpha in args.alphas:
                err, agree = agreement(model, batch, mask, ref, peaks, alpha, per_row)
                print(f"| {scale} | {name} | {alpha:g} | {err:.4f} | {agree:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
