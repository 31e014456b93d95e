"""A quantized frozen base (``lorakit.quant``) against fp32: output agreement, greedy decoding speed, and LoRA
training step time and peak memory, side by side in one run.

1. Quality: logits of the model below (base + LoRA) on E2E dev prompts, every position, against fp32:
   relative error and top-1 agreement, per mode as lorakit quantizes it, and with the other choice for the
   LM head (fp32 for int8/bf16, quantized too for int4/nf4): what quantizing the head costs. With
   --outlier-layers K ..., int8 again with the K layers whose inputs have the largest outlier ratio (a
   channel's largest |x| over the median channel's, on these prompts in fp32) kept in bf16: whether int8's
   loss of agreement comes from a few layers.
2. Greedy decoding, batch --batch-size, same fresh r=8 q_proj/v_proj LoRA (B non-zero) for every side,
   unmerged everywhere (a quantized base cannot take a merge): lorakit on fp32, HF ``generate`` on fp32,
   lorakit on each --modes, and HF ``generate`` on each --hf-modes. Sides alternate within each repeat
   (median reported), so that load from other work hits all alike. Tokens/s count generated tokens up to
   EOS; "same as fp32" is the share of sequences identical to lorakit fp32's; "model forward" is the share
   of the time inside the model's forward passes (the rest is the decoding loop's own overhead).
3. Training: lorakit's Trainer (the ``quantize`` setting, as ``lorakit train --quantize``) on E2E train,
   each configuration in its own subprocess: seconds per step (steps after the first two) and peak RSS
   during training (VmHWM reset after setup, so loading is not counted; the load peak is shown apart).
4. Loading: ``load_model(quantize=MODE)`` in a fresh subprocess each, quantizing from fp32
   (``quant_cache=False``) against reading the disk cache (``lorakit.quant.cache``, filled by a load
   before): seconds and peak RSS of the load, and the cache entry's size; fp32 (``none``) for reference.

    LORAKIT_DATA=../shared/data .venv/bin/python benchmarks/quant_speed.py           # several minutes
    LORAKIT_DATA=../shared/data .venv/bin/python benchmarks/quant_speed.py --quick   # about a minute

Timings on a shared machine are disturbed by other work: compare the ratios of one run, not runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from generate_speed import build_model, hf_generate, ours_generate, timed

from lorakit.decode import DecodeConfig, length_batches
from lorakit.files import folder_bytes
from lorakit.hardware import describe
from lorakit.quant import quantize_model
from lorakit.quant.model import HEAD_MODES, quant_plan
from lorakit.recipes import setup as recipe_setup
from lorakit.tasks import get_task
from lorakit.train import TrainConfig, Trainer
from lorakit.train.logs import MetricsLog

RESULT_MARK = "QUANT_SPEED_RESULT "
WARMUP_STEPS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", help="data root (default: $LORAKIT_DATA)")
    p.add_argument("--modes", nargs="+", default=["int8", "bf16", "int4"], help="quantized modes to compare")
    p.add_argument("--hf-modes", nargs="*", default=["int8"], help="also HF generate on these quantized bases")
    p.add_argument("--quality-prompts", type=int, default=16)
    p.add_argument("--outlier-layers", type=int, nargs="*", default=[],
                   help="quality: int8 with this many outlier layers kept in bf16 (e.g. 4 16)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=2, help="greedy: batches of prompts per measurement")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-modes", nargs="*", default=["none", "int8", "int4"], help="'none' is fp32")
    p.add_argument("--train-steps", type=int, default=8)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--checkpointing", action="store_true", help="train with gradient checkpointing (activations "
                   "recomputed: the weights are then a larger share of the memory)")
    p.add_argument("--load-modes", nargs="*", default=["int8", "bf16", "int4"], help="loading: fresh vs cached")
    p.add_argument("--skip", nargs="*", default=[], choices=["quality", "greedy", "train", "load"],
                   help="parts not to run")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="about a minute: fewer prompts, tokens and steps")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--train-worker", help=argparse.SUPPRESS)  # internal: one training configuration
    p.add_argument("--load-worker", nargs=2, help=argparse.SUPPRESS)  # internal: MODE cached|fresh
    args = p.parse_args(argv)
    if args.quick:
        args.quality_prompts, args.batches, args.new_tokens, args.repeats = 8, 1, 16, 1
        args.modes, args.hf_modes, args.train_steps, args.train_batch = ["int8", "bf16"], ["int8"], 4, 4
        args.train_modes, args.load_modes = ["none", "int8"], ["int8"]
    return args


# --- 1. quality ---------------------------------------------------------------------------------------
def quality(model, tokenizer, prompts: list[str], modes: list[str],
            outlier_layers: list[int]) -> list[dict[str, Any]]:
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = model(**batch).logits.float()
    rows = []
    # each mode as lorakit quantizes it (the LM head too for HEAD_MODES), then with the other head choice
    for mode, head in [(m, None) for m in modes] + [(m, m not in HEAD_MODES) for m in modes]:
        quantized = copy.deepcopy(model)
        quantize_model(quantized, mode, head=head)
        with torch.no_grad():
            out = quantized(**batch).logits.float()
        label = mode + ("" if head is None else " (head fp32)" if not head else " (head too)")
        err, agree = against_fp32(out, ref, mask)
        rows.append({"bench": "quality", "mode": label, "rel_error": err, "top1_agreement": agree})
        print(f"quality {label:16s}: logits relative error {err:.4f}, top-1 agreement with fp32 {agree:.3f} "
              f"({int(mask.sum())} positions)", flush=True)
    ranking = outlier_ranking(model, batch, mask) if outlier_layers else []
    if ranking:
        print("outlier ratio of each int8 layer's input, largest first: "
              + ", ".join(f"{path} {ratio:.0f}" for path, ratio in ranking[:5]), flush=True)
    for k in outlier_layers:
        quantized = copy.deepcopy(model)
        quantize_model(quantized, "bf16", only={path for path, _ in ranking[:k]})
        quantize_model(quantized, "int8")  # the rest; the bf16 layers stay as they are
        with torch.no_grad():
            out = quantized(**batch).logits.float()
        err, agree = against_fp32(out, ref, mask)
        rows.append({"bench": "quality", "mode": f"int8, {k} outlier layers bf16", "rel_error": err,
                     "top1_agreement": agree, "bf16_layers": [path for path, _ in ranking[:k]]})
        print(f"quality int8, {k} outlier layers bf16: logits relative error {err:.4f}, top-1 agreement with fp32 "
              f"{agree:.3f}", flush=True)
    return rows


def against_fp32(out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(relative error of the logits, top-1 agreement) at the real positions."""
    err = ((out - ref)[mask].norm() / ref[mask].norm()).item()
    return err, (out.argmax(-1) == ref.argmax(-1))[mask].float().mean().item()


def outlier_ranking(model: torch.nn.Module, batch: Any, mask: torch.Tensor) -> list[tuple[str, float]]:
    """int8's layers by their input's outlier ratio on ``batch`` (fp32): the largest per-channel |x| over the
    median channel's. One activation scale per call must cover the largest channel, so a large ratio leaves
    the other channels few of the 255 levels."""
    ratios: dict[str, float] = {}

    def hook(path: str) -> Any:
        def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            peak = inputs[0][mask].abs().amax(0)
            ratios[path] = (peak.max() / peak.median().clamp_min(1e-12)).item()
        return record

    handles = [module.register_forward_hook(hook(path)) for path, module, _ in quant_plan(model, "int8")]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(ratios.items(), key=lambda item: -item[1])


# --- 2. greedy decoding -------------------------------------------------------------------------------
def decoding(base, tokenizer, prompts: list[list[int]], args: argparse.Namespace) -> list[dict[str, Any]]:
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    models = {"fp32": base}
    for mode in args.modes:  # the same adapter on each quantized base
        models[mode] = copy.deepcopy(base)
        quantize_model(models[mode], mode)
    sides = [("lorakit", m) for m in models] + [("HF", "fp32")] + [("HF", m) for m in args.hf_modes if m in models]
    batches = [[prompts[i] for i in b] for b in length_batches([len(p) for p in prompts], args.batch_size)]
    batches = batches[:args.batches]
    flat = [p for b in batches for p in b]
    config = DecodeConfig("greedy", max_new_tokens=args.new_tokens)
    for who, mode in sides:  # warm-up: first calls allocate and pick kernels
        run_side(who, models[mode], [flat[:2]], config, pad, eos)
    times: dict[tuple[str, str], list[float]] = {s: [] for s in sides}
    forward: dict[tuple[str, str], list[float]] = {s: [] for s in sides}
    outputs: dict[tuple[str, str], list[list[int]]] = {}
    clock = ForwardClock(list(models.values()))
    try:
        for _ in range(args.repeats):
            for side in sides:
                clock.seconds = 0.0
                seconds, outputs[side] = timed(run_side, side[0], models[side[1]], batches, config, pad, eos)
                times[side].append(seconds)
                forward[side].append(clock.seconds)
    finally:
        clock.close()
    reference = outputs[("lorakit", "fp32")]
    hf_fp32 = _tok_s(outputs[("HF", "fp32")], times[("HF", "fp32")])
    ours_fp32 = _tok_s(reference, times[("lorakit", "fp32")])
    rows = []
    for side in sides:
        speed = _tok_s(outputs[side], times[side])
        same = sum(a == b for a, b in zip(outputs[side], reference, strict=True)) / len(reference)
        hf_same = _tok_s(outputs[("HF", side[1])], times[("HF", side[1])]) if ("HF", side[1]) in times else None
        row = {"bench": "greedy", "side": side[0], "mode": side[1], "batch_size": args.batch_size,
               "tok_s": speed, "vs_hf_fp32": speed / hf_fp32, "vs_lorakit_fp32": speed / ours_fp32,
               "vs_hf_same_base": speed / hf_same if hf_same else None, "same_as_fp32": same,
               "times_s": times[side], "forward_share": sum(forward[side]) / sum(times[side])}
        rows.append(row)
        extra = f", {row['vs_hf_same_base']:.2f}x HF on the same base" if side[0] == "lorakit" and hf_same else ""
        print(f"greedy batch {args.batch_size}: {side[0]:7s} {side[1]:5s} {speed:7.1f} tok/s -> "
              f"{row['vs_hf_fp32']:.2f}x HF fp32, {row['vs_lorakit_fp32']:.2f}x lorakit fp32{extra}; "
              f"same tokens as lorakit fp32: {same:.2f}; model forward {row['forward_share']:.1%} of the time",
              flush=True)
    return rows


class ForwardClock:
    """Seconds spent inside the models' forward passes (hooks on each top-level model, removed by ``close``).
    The rest of a decode is the decoding loop's own overhead; a decoder can also win by sending fewer rows or
    columns through the forward passes, which this share does not show."""

    def __init__(self, models: list[torch.nn.Module]) -> None:
        self.seconds, self._start = 0.0, 0.0
        self._handles = [h for m in models for h in (m.register_forward_pre_hook(self._enter),
                                                      m.register_forward_hook(self._leave))]

    def _enter(self, module: torch.nn.Module, inputs: tuple) -> None:
        self._start = time.perf_counter()

    def _leave(self, module: torch.nn.Module, inputs: tuple, output: Any) -> None:
        self.seconds += time.perf_counter() - self._start

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def run_side(who: str, model, batches: list[list[list[int]]], config: DecodeConfig, pad: int,
             eos: int) -> list[list[int]]:
    if who == "HF":
        return [o for b in batches for o in hf_generate(model, b, pad, eos, max_new_tokens=config.max_new_tokens,
                                                         do_sample=False)]
    return ours_generate(model, [p for b in batches for p in b], config, pad, eos, max(map(len, batches)))


def _tok_s(outputs: list[list[int]], times: list[float]) -> float:
    return sum(map(len, outputs)) / statistics.median(times)


# --- 3. training (one subprocess per configuration) ---------------------------------------------------
def peak_rss_mb() -> float:
    """VmHWM (peak resident set since the last reset) in MiB; ru_maxrss where /proc is not readable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Start a new peak (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def train_worker(args: argparse.Namespace) -> None:
    mode = args.train_worker
    with tempfile.TemporaryDirectory(prefix="lorakit-quant-bench-") as out:
        config = TrainConfig(task="e2e", model=args.model, data=args.data, output=out, quantize=mode, lora_rank=8,
                             lora_dropout=0.0, max_steps=args.train_steps, batch_size=args.train_batch,
                             warmup_steps=0, save_every=10**9, log_every=1, samples=0, max_train_examples=256,
                             gradient_checkpointing=args.checkpointing)
        parts = recipe_setup(config)
        load_peak = peak_rss_mb()
        reset = reset_peak_rss()
        start = peak_rss_mb()  # just after the reset: what training starts from

        class Unsaved(Trainer):
            def save_checkpoint(self, step: int) -> None:
                pass

            def save_result(self, folder: Path | None = None) -> None:
                pass

        Unsaved(parts.config, parts.model, parts.tokenizer, parts.samples, parts.loss).fit()
        log = MetricsLog(Path(out) / "log.jsonl").read()
    ends = [r["elapsed_s"] for r in log]
    timed_steps = len(ends) - WARMUP_STEPS
    result = {"mode": mode, "sec_per_step": (ends[-1] - ends[WARMUP_STEPS - 1]) / timed_steps,
              "tokens_per_s": sum(r["tokens"] for r in log[WARMUP_STEPS:]) / (ends[-1] - ends[WARMUP_STEPS - 1]),
              "train_peak_rss_mb": peak_rss_mb(), "load_peak_rss_mb": load_peak, "peak_reset": reset,
              "start_rss_mb": start,
              "losses": [r["loss"] for r in log]}
    print(RESULT_MARK + json.dumps(result), flush=True)


def training(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for mode in args.train_modes:
        cmd = [sys.executable, __file__, "--train-worker", mode, "--model", args.model, "--train-steps",
               str(args.train_steps), "--train-batch", str(args.train_batch)]
        cmd += ["--data", args.data] if args.data else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--checkpointing"] if args.checkpointing else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
        if proc.returncode != 0 or not lines:
            print(f"train {mode}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", flush=True)
            continue
        rows.append({"bench": "train", **json.loads(lines[-1][len(RESULT_MARK):])})
    base = next((r for r in rows if r["mode"] == "none"), None)
    for r in rows:
        name = "fp32" if r["mode"] == "none" else r["mode"]
        ratio = (f" -> step time {r['sec_per_step'] / base['sec_per_step']:.2f}x fp32, throughput "
                 f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x, peak RSS "
                 f"{r['train_peak_rss_mb'] / base['train_peak_rss_mb']:.2f}x") if base else ""
        print(f"train {name:5s}: {r['sec_per_step']:.2f} s/step, {r['tokens_per_s']:.0f} tokens/s, peak RSS "
              f"training {r['train_peak_rss_mb']:.0f} MiB (at its start {r['start_rss_mb']:.0f}, load peak "
              f"{r['load_peak_rss_mb']:.0f}){ratio}; "
              f"losses {', '.join(f'{x:.3f}' for x in r['losses'])}", flush=True)
    return rows


# --- 4. loading (one subprocess per load) -------------------------------------------------------------
def load_worker(args: argparse.Namespace) -> None:
    from lorakit.models import load_model

    mode, how = args.load_worker
    resolve_location(args.model)  # converts SmolLM2 once (outside the timing) if the cache lacks it
    start = time.perf_counter()
    load_model(args.model, quantize=mode, quant_cache=how == "cached")
    seconds = time.perf_counter() - start
    print(RESULT_MARK + json.dumps({"mode": mode, "how": how, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}),
          flush=True)


def loading(args: argparse.Namespace) -> list[dict[str, Any]]:
    from lorakit.quant.cache import entries

    rows = []
    for mode in ["none", *args.load_modes]:
        for how in (("fresh",) if mode == "none" else ("fresh", "fill", "cached")):
            cmd = [sys.executable, __file__, "--load-worker", mode, "fresh" if how == "fresh" else "cached",
                   "--model", args.model] + (["--threads", str(args.threads)] if args.threads else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
            if proc.returncode != 0 or not lines:
                print(f"load {mode} {how}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", flush=True)
                break
            if how != "fill":  # the first cached load may have had to write the entry: not timed
                rows.append({"bench": "load", **json.loads(lines[-1][len(RESULT_MARK):]), "how": how})
    source = str(Path(resolve_location(args.model)).resolve())
    sizes = {stamp["mode"]: folder_bytes(folder) for folder, stamp in entries() if stamp["source"] == source}
    base = next((r for r in rows if r["mode"] == "none"), None)
    for r in rows:
        extra = ""
        if r["how"] == "cached":
            fresh = next(x for x in rows if x["mode"] == r["mode"] and x["how"] == "fresh")
            extra = (f" -> {r['seconds'] / fresh['seconds']:.2f}x the time and "
                     f"{r['peak_rss_mb'] / fresh['peak_rss_mb']:.2f}x the peak of quantizing; cache entry "
                     f"{sizes.get(r['mode'], 0) / 2**20:.2f} MiB")
        ref = f" ({r['seconds'] / base['seconds']:.1f}x fp32's time)" if base and r is not base else ""
        print(f"load {r['mode']:5s} {r['how']:6s}: {r['seconds']:.2f} s{ref}, peak RSS {r['peak_rss_mb']:.0f} MiB"
              f"{extra}", flush=True)
    return rows


def resolve_location(name: str) -> str:
    from lorakit.models import resolve_model

    return resolve_model(name).location


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_worker:
        train_worker(args)
        return 0
    if args.load_worker:
        load_worker(args)
        return 0
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {describe()}; torch threads={torch.get_num_threads()}; python {platform.python_version()}; "
          f"load average {os.getloadavg()}", flush=True)
    model, tokenizer = build_model(args.model)
    print(f"model: {args.model} (fp32) + fresh r=8 q_proj/v_proj LoRA, B ~ N(0, 0.01)", flush=True)
    task = get_task("e2e")
    sources = [task.prompt(ex.source) for ex in task.examples("dev", args.data)]
    results = []
    if "quality" not in args.skip:
        results += quality(model, tokenizer, sources[:args.quality_prompts], args.modes, args.outlier_layers)
    if "greedy" not in args.skip:
        prompts = tokenizer(sources, add_special_tokens=False)["input_ids"]
        results += decoding(model, tokenizer, prompts, args)
    del model
    if "train" not in args.skip:
        results += training(args)
    if "load" not in args.skip:
        results += loading(args)
    print(f"load average at the end {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
