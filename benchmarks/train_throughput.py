"""Training throughput and peak memory: lorakit's training loop against Hugging Face ``Trainer`` + PEFT LoRA.

The requirement this measures: training throughput in non-padding tokens per second against HF Trainer +
PEFT LoRA on the same model (SmolLM2-135M), data (E2E train), batch size, rank and targets, side by side in
one run on this machine (goal >= 1.5x); and peak memory of LoRA against full fine-tuning (goal <= 0.5x).

How it is measured, and why:

* Every configuration runs in its own subprocess (this script re-invoked with ``--worker NAME``), so peak
  RSS (``ru_maxrss``) and the CUDA peak belong to that configuration alone. Workers print one JSON line.
* Both sides train on exactly the same examples: lorakit's seeded subset of the E2E training pairs,
  tokenised once by ``lorakit.train.tokenize_pairs`` (prompt labelled -100, target + EOS learned). The HF
  side pads them per batch with ``DataCollatorForSeq2Seq`` (labels padded with -100).
* Same model, batch size, rank, alpha, dropout (0), targets, learning rate, linear schedule without
  warmup, weight decay, gradient clipping, seed and precision (fp32 on CPU, bf16/fp16 autocast on a GPU).
  What differs is each framework's own defaults, which is what is being compared: lorakit groups batches
  by length and applies the LM head to target positions only; HF Trainer samples at random (a second HF
  row uses its length-grouped sampler, for fairness) and uses fused AdamW.
* Steps 1-2 are warm-up and are discarded on both sides: tokens/s = non-padding tokens (attention-mask
  sum, prompt included) of steps 3..N / time from the end of step 2 to the end of step N. Both
  timestamps are taken after the optimizer step (after a CUDA synchronise on a GPU).
* Peak memory is read after the last training step; lorakit's checkpoint and adapter writing is skipped
  (the HF side runs with ``save_strategy="no"``), so neither side's peak includes saving.

* ``--score-dev N`` also compares quality: after training, each side's model (PEFT's merged by
  ``merge_and_unload``, lorakit's with its adapter) decodes the first N E2E dev MRs greedily with the same
  decoder (``lorakit.decode.generate``), scored by the E2E scorer's BLEU, NIST, ROUGE_L and CIDEr. The
  decoder is shared so that only training differs.

    python benchmarks/train_throughput.py --steps 30 --batch-size 8 --rank 8 --examples 2000 [--json out.json]
    python benchmarks/train_throughput.py --configs lorakit-lora hf-peft-lora --steps 300 --examples 2400 \
        --targets q_proj k_proj v_proj o_proj --lr 1e-3 --score-dev 200    # the same recipe, quality too
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorakit.decode import DecodeConfig, generate
from lorakit.hardware import describe
from lorakit.metrics import GENERATION_METRICS, require_metrics
from lorakit.models import load_model
from lorakit.recipes import setup as recipe_setup
from lorakit.recipes.finetune import subset
from lorakit.tasks import get_task
from lorakit.train import TrainConfig, Trainer, padding_fraction
from lorakit.train.logs import MetricsLog

WARMUP_STEPS = 2  # discarded from timing on both sides
RESULT_MARK = "TRAIN_THROUGHPUT_RESULT "  # prefix of the worker's JSON line on stdout


@dataclass(frozen=True)
class Setup:
    """One benchmarked configuration."""

    label: str
    framework: str  # "lorakit" or "hf"
    full_finetune: bool = False
    grouped: bool = False  # batches of similar lengths
    checkpointing: bool = False  # recompute activations in backward (less memory, more compute)
    token_weighting: str = "batch"  # lorakit's TrainConfig.token_weighting


SETUPS: dict[str, Setup] = {
    "lorakit-lora": Setup("lorakit LoRA", "lorakit", grouped=True),
    "hf-peft-lora": Setup("HF Trainer + PEFT LoRA (random sampler)", "hf"),
    "hf-peft-lora-grouped": Setup("HF Trainer + PEFT LoRA (group_by_length)", "hf", grouped=True),
    "lorakit-full": Setup("lorakit full fine-tuning", "lorakit", full_finetune=True, grouped=True),
    "hf-full": Setup("HF Trainer full fine-tuning (random sampler)", "hf", full_finetune=True),
    # not run by default: separates lorakit's length grouping from the rest of its loop
    "lorakit-lora-ungrouped": Setup("lorakit LoRA (random batches)", "lorakit"),
    "lorakit-lora-uniform": Setup("lorakit LoRA (grouped, every target token weighed the same)", "lorakit",
                                  grouped=True, token_weighting="uniform"),
    "lorakit-lora-ckpt": Setup("lorakit LoRA + gradient checkpointing", "lorakit", grouped=True, checkpointing=True),
    "lorakit-full-ckpt": Setup("lorakit full FT + gradient checkpointing", "lorakit", full_finetune=True,
                               grouped=True, checkpointing=True),
}
DEFAULT_SETUPS = ["lorakit-lora", "hf-peft-lora", "hf-peft-lora-grouped", "lorakit-full", "hf-full"]


# ----------------------------------------------------------------------------------------- measuring


def pick_device() -> torch.device:
    """The device both frameworks pick on their own: the GPU when there is one."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def memory_peaks(device: torch.device) -> dict[str, float | None]:
    """Peak RSS of this process so far (ru_maxrss is KB on Linux) and, on a GPU, peak allocated memory."""
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mb": rss_mb, "cuda_peak_mb": cuda_mb}


def gpu_precision() -> dict[str, bool]:
    """What lorakit's precision='auto' does on a GPU (bf16 autocast, else fp16), as HF TrainingArguments."""
    if not torch.cuda.is_available():
        return {}
    return {"bf16": True} if torch.cuda.is_bf16_supported() else {"fp16": True}


def lorakit_config(args: argparse.Namespace, setup: Setup, output: str) -> TrainConfig:
    """The run both sides share; the HF side takes its examples from it too (same seeded subset)."""
    return TrainConfig(task="e2e", model=args.model, data=args.data, output=output, full_finetune=setup.full_finetune,
                       lora_rank=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=args.targets,
                       max_steps=args.steps,
                       batch_size=args.batch_size, lr=args.lr, warmup_steps=0, weight_decay=args.weight_decay,
                       group_by_length=setup.grouped, token_weighting=setup.token_weighting,
                       gradient_checkpointing=setup.checkpointing,
                       save_every=10**9, log_every=1, samples=0,
                       max_train_examples=args.examples, seed=args.seed)


def trainable_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def timed_window(step_ends: list[float], tokens: list[int], steps: int) -> dict[str, Any]:
    """Throughput over steps WARMUP+1..N: tokens of those steps over the time from end of step WARMUP to N."""
    if len(step_ends) < steps or len(tokens) < steps:
        raise RuntimeError(f"expected {steps} steps, saw {len(step_ends)} timestamps and {len(tokens)} batches")
    seconds = step_ends[steps - 1] - step_ends[WARMUP_STEPS - 1]
    real = sum(tokens[WARMUP_STEPS:steps])
    timed = steps - WARMUP_STEPS
    # per-step rates expose interference from other work on a shared machine (see disturbances())
    per_step = [tokens[i] / (step_ends[i] - step_ends[i - 1]) for i in range(WARMUP_STEPS, steps)]
    return {"timed_steps": timed, "tokens": real, "seconds": seconds, "tokens_per_s": real / seconds,
            "sec_per_step": seconds / timed, "step_tokens_per_s": per_step}


def dev_scores(model: torch.nn.Module, tokenizer, args: argparse.Namespace) -> dict[str, Any]:
    """Greedy outputs of the first ``--score-dev`` E2E dev MRs, scored (nothing when the flag is 0)."""
    if not args.score_dev:
        return {}
    task = get_task("e2e")
    examples = task.examples("dev", args.data)[:args.score_dev]
    model.eval()
    started = time.perf_counter()
    outputs = generate(model, tokenizer, [task.prompt(ex.source) for ex in examples],
                       DecodeConfig(max_new_tokens=96), batch_size=16, progress=False)
    from lorakit.metrics.training import training_scores  # the metrics extra, checked in main

    scores = training_scores("e2e", outputs, [list(ex.references) for ex in examples])
    return {"dev_inputs": len(examples), "dev_scores": scores, "decode_s": time.perf_counter() - started}


# ------------------------------------------------------------------------------------------- workers


def run_lorakit(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """lorakit's own Trainer, unchanged except that it records memory and writes no checkpoint or adapter."""
    device = pick_device()

    class MeasuredTrainer(Trainer):
        peaks: dict[str, float | None] | None = None  # set after every step

        def step(self, step: int) -> tuple[float, int]:
            result = super().step(step)
            self.peaks = memory_peaks(device)  # ru_maxrss only grows: the last step's value is the peak
            return result

        def save_checkpoint(self, step: int) -> None:
            pass

        def save_result(self, folder: Path | None = None) -> None:
            pass

    model, tokenizer = load_model(args.model)
    after_load = memory_peaks(device)
    with tempfile.TemporaryDirectory(prefix="lorakit-bench-") as out:
        parts = recipe_setup(lorakit_config(args, setup, out), model, tokenizer)
        trainer = MeasuredTrainer(parts.config, parts.model, parts.tokenizer, parts.samples, parts.loss)
        trainer.fit()
        log = MetricsLog(Path(out) / "log.jsonl").read()
    window = timed_window([r["elapsed_s"] for r in log], [r["tokens"] for r in log], args.steps)
    batches = [trainer.global_batch(s) for s in range(WARMUP_STEPS, args.steps)]
    trainable, total = trainable_params(trainer.model)
    quality = dev_scores(trainer.model, tokenizer, args)
    return {**window, **(trainer.peaks or {}), **quality, "load_peak_rss_mb": after_load["peak_rss_mb"],
            "padding": padding_fraction(trainer.samples, batches),
            "mean_loss": statistics.fmean(r["loss"] for r in log),
            "trainable_params": trainable, "total_params": total, "examples": len(trainer.samples)}


class CountingCollator:
    """Wraps the HF collator and records each batch's non-padding tokens and token slots, in call order.

    Batches reach the model in the order they are collated (no gradient accumulation), so entry k is step
    k's batch even though the dataloader may collate one batch ahead.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.real: list[int] = []
        self.slots: list[int] = []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        self.real.append(int(batch["attention_mask"].sum()))
        self.slots.append(batch["attention_mask"].numel())
        return batch


def run_hf(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """HF ``Trainer`` (+ PEFT LoRA unless full fine-tuning) on the same tokenised examples as lorakit."""
    import peft
    from transformers import DataCollatorForSeq2Seq, TrainerCallback, TrainingArguments
    from transformers import Trainer as HFTrainer

    device = pick_device()

    class StepClock(TrainerCallback):
        """Timestamp and memory after every optimizer step."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.peaks: dict[str, float | None] = {}

        def on_step_end(self, *_: Any, **__: Any) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.ends.append(time.perf_counter())
            self.peaks = memory_peaks(device)

    model, tokenizer = load_model(args.model)
    after_load = memory_peaks(device)
    with tempfile.TemporaryDirectory(prefix="hf-bench-") as out:
        config = lorakit_config(args, setup, out)
        task = get_task("e2e")  # the same seeded subset lorakit's recipe trains on; the model stays untouched
        samples = subset(task.train_samples(tokenizer, config.data, config.max_length), config.max_train_examples,
                         config.seed)
        features = [{"input_ids": s.input_ids, "attention_mask": [1] * len(s.input_ids), "labels": s.labels}
                    for s in samples]
        if setup.full_finetune:
            model.requires_grad_(True)
        else:
            model = peft.get_peft_model(model, peft.LoraConfig(
                r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=args.targets,
                task_type="CAUSAL_LM"))
        # transformers 5 replaced group_by_length=True with train_sampling_strategy="group_by_length"
        fields = {f.name for f in dataclasses.fields(TrainingArguments)}
        sampling: dict[str, Any] = {}
        if setup.grouped:
            sampling = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields
                        else {"group_by_length": True})
        training_args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
            max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0,
            weight_decay=args.weight_decay, max_grad_norm=1.0, seed=args.seed, eval_strategy="no",
            save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, remove_unused_columns=False, use_cpu=device.type == "cpu",
            **gpu_precision(), **sampling)
        collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100))
        clock = StepClock()
        trainer = HFTrainer(model=model, args=training_args, train_dataset=features, data_collator=collator,
                            processing_class=tokenizer, callbacks=[clock])
        result = trainer.train()
    window = timed_window(clock.ends, collator.real, args.steps)
    timed_slots = sum(collator.slots[WARMUP_STEPS:args.steps])
    trainable, total = trainable_params(model)
    quality = dev_scores(model if setup.full_finetune else model.merge_and_unload(), tokenizer, args)
    return {**window, **clock.peaks, **quality, "load_peak_rss_mb": after_load["peak_rss_mb"],
            "padding": 1 - window["tokens"] / timed_slots, "mean_loss": result.training_loss,
            "trainable_params": trainable, "total_params": total, "examples": len(features)}


def worker(args: argparse.Namespace) -> None:
    """Run one configuration and print its result as one JSON line (the parent reads it)."""
    torch.set_num_threads(args.threads)
    setup = SETUPS[args.worker]
    run = run_lorakit if setup.framework == "lorakit" else run_hf
    result = {"config": args.worker, "label": setup.label, "steps": args.steps, "device": str(pick_device()),
              "threads": torch.get_num_threads(), **run(args, setup)}
    print(RESULT_MARK + json.dumps(result), flush=True)


# -------------------------------------------------------------------------------------------- parent


def worker_command(args: argparse.Namespace, name: str) -> list[str]:
    """This script, re-invoked for one configuration with the same settings."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--model", args.model,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--rank", str(args.rank),
               "--alpha", str(args.alpha), "--lr", str(args.lr), "--weight-decay", str(args.weight_decay),
               "--examples", str(args.examples), "--seed", str(args.seed), "--threads", str(args.threads),
               "--score-dev", str(args.score_dev), "--targets", *args.targets]
    return [*command, "--data", args.data] if args.data else command


def run_worker(args: argparse.Namespace, name: str) -> dict[str, Any] | None:
    """One subprocess; None (with its stderr tail shown) when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    # one GPU: HF Trainer would otherwise spread a batch over all visible GPUs with DataParallel
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")
    print(f"  running {name} ...", end="", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(worker_command(args, name), env=env, text=True, stdout=subprocess.PIPE,
                          stderr=None if args.verbose else subprocess.PIPE)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        print(f" FAILED (exit {proc.returncode})")
        print("\n".join((proc.stderr or proc.stdout or "").splitlines()[-25:]), file=sys.stderr)
        return None
    print(f" {time.perf_counter() - started:.0f} s")
    return json.loads(lines[-1][len(RESULT_MARK):])


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import peft
    import transformers

    info = {"cpu": describe(), "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "device": str(pick_device())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration: medians over repeats (peak RSS also varies by ~10% between identical runs)."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == name]
        row = dict(mine[0])
        for key in ("tokens_per_s", "sec_per_step", "padding", "mean_loss"):
            row[key] = statistics.median(r[key] for r in mine)
        for key in ("peak_rss_mb", "cuda_peak_mb", "load_peak_rss_mb"):
            values = [r[key] for r in mine if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        row["repeats"] = len(mine)
        out[name] = row
    return out


def disturbances(runs: list[dict[str, Any]]) -> list[str]:
    """Signs that other work disturbed the timing: one step far slower than the run's median step, or
    repeats of one configuration that disagree. Step rates vary a little with batch length, never 3x."""
    notes = []
    for r in runs:
        rates = r["step_tokens_per_s"]
        if min(rates) < statistics.median(rates) / 3:
            notes.append(f"{r['config']} (repeat {r['repeat']}): slowest step {min(rates):.0f} tok/s against a "
                         f"median step of {statistics.median(rates):.0f} tok/s")
    for name in dict.fromkeys(r["config"] for r in runs):
        rates = [r["tokens_per_s"] for r in runs if r["config"] == name]
        if len(rates) > 1 and max(rates) > 1.25 * min(rates):
            notes.append(f"{name}: repeats range {min(rates):.0f}-{max(rates):.0f} tok/s")
    return notes


def ratio(summary: dict[str, dict[str, Any]], num: str, den: str, key: str) -> float | None:
    if num not in summary or den not in summary or not summary[num].get(key) or not summary[den].get(key):
        return None
    return summary[num][key] / summary[den][key]


def compute_ratios(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The requirement's ratios (with goals) and the HF-side memory ratio for context."""
    wanted = [
        ("throughput", "lorakit-lora", "hf-peft-lora", "tokens_per_s", ">=", 1.5),
        ("throughput", "lorakit-lora", "hf-peft-lora-grouped", "tokens_per_s", ">=", 1.5),
        ("throughput", "lorakit-lora-ungrouped", "hf-peft-lora", "tokens_per_s", None, None),
        ("peak RSS", "lorakit-lora", "lorakit-full", "peak_rss_mb", "<=", 0.5),
        ("peak RSS", "hf-peft-lora", "hf-full", "peak_rss_mb", None, None),
        ("peak RSS", "lorakit-lora-ckpt", "lorakit-full", "peak_rss_mb", None, None),
        ("peak RSS", "lorakit-lora-ckpt", "lorakit-full-ckpt", "peak_rss_mb", None, None),
        ("throughput", "lorakit-lora-ckpt", "lorakit-lora", "tokens_per_s", None, None),
        ("CUDA peak", "lorakit-lora", "lorakit-full", "cuda_peak_mb", "<=", 0.5),
        ("CUDA peak", "hf-peft-lora", "hf-full", "cuda_peak_mb", None, None),
    ]
    ratios = []
    for what, num, den, key, op, goal in wanted:
        value = ratio(summary, num, den, key)
        if value is None:
            continue
        met = None if goal is None else (value >= goal if op == ">=" else value <= goal)
        ratios.append({"what": what, "numerator": num, "denominator": den, "metric": key, "ratio": value,
                       "goal": None if goal is None else f"{op} {goal}", "met": met})
    return ratios


def print_report(command: str, machine: dict[str, Any], summary: dict[str, dict[str, Any]],
                 ratios: list[dict[str, Any]], notes: list[str]) -> None:
    print(f"\ncommand: {command}")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    cuda = any(r.get("cuda_peak_mb") is not None for r in summary.values())
    header = (f"{'config':<24} {'steps':>5} {'timed':>5} {'tok/s (non-pad)':>15} {'s/step':>7} {'pad %':>6} "
              f"{'peak RSS MB':>11}{' CUDA peak MB' if cuda else ''} {'trainable':>12} {'loss':>6}")
    print("\n" + header + "\n" + "-" * len(header))
    for name, r in summary.items():
        gpu = f" {r['cuda_peak_mb']:>12.0f}" if cuda else ""
        print(f"{name:<24} {r['steps']:>5} {r['timed_steps']:>5} {r['tokens_per_s']:>15.1f} {r['sec_per_step']:>7.2f} "
              f"{100 * r['padding']:>6.1f} {r['peak_rss_mb']:>11.0f}{gpu} {r['trainable_params']:>12,} "
              f"{r['mean_loss']:>6.3f}")
    print(f"\n(timed = steps {WARMUP_STEPS + 1}..N; pad % = padding share of the timed batches' token slots; "
          "loss = mean training loss, a sanity check only)")
    for name, r in summary.items():
        print(f"  {name}: {SETUPS[name].label}; peak RSS right after loading the model {r['load_peak_rss_mb']:.0f} MB"
              + (f"; median of {r['repeats']} runs" if r["repeats"] > 1 else ""))
    scored = {name: r for name, r in summary.items() if r.get("dev_scores")}
    if scored:
        print(f"\nquality after training (greedy, first {next(iter(scored.values()))['dev_inputs']} E2E dev MRs, "
              "one decoder for all; with --repeats, the first repeat's):")
        for name, r in scored.items():
            print(f"  {name:<24} " + "  ".join(f"{k} {v:.4f}" for k, v in r["dev_scores"].items())
                  + f"  (decoding {r['decode_s']:.0f} s)")
    print()
    for r in ratios:
        verdict = "" if r["met"] is None else f"   goal {r['goal']}x: {'MET' if r['met'] else 'NOT MET'}"
        print(f"{r['what']:<10} {r['numerator']} / {r['denominator']}: {r['ratio']:.2f}x{verdict}")
    if notes:
        print("\nWARNING: timing looks disturbed by other work on this machine; rerun (with --repeats) when idle:")
        print("\n".join(f"  {n}" for n in notes))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help=f"optimizer steps per run; the first {WARMUP_STEPS} "
                        "are not timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01, help="lorakit's default, given to HF too")
    parser.add_argument("--examples", type=int, default=2000, help="seeded subset of the E2E training pairs")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=os.environ.get("LORAKIT_DATA"), help="dataset root (default $LORAKIT_DATA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every worker")
    parser.add_argument("--configs", nargs="+", choices=list(SETUPS), default=DEFAULT_SETUPS,
                        help="configurations to run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the configurations this many times, order reversed every other time; medians")
    parser.add_argument("--score-dev", type=int, default=0, metavar="N",
                        help="after training, decode the first N E2E dev MRs greedily and score them (quality "
                             "side by side; default 0: off)")
    parser.add_argument("--json", dest="json_out", help="also write all results to this file")
    parser.add_argument("--verbose", action="store_true", help="show the workers' stderr (progress bars, warnings)")
    parser.add_argument("--worker", choices=list(SETUPS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be more than the {WARMUP_STEPS} untimed warm-up steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.score_dev and not args.worker:  # scored after every worker has trained: refuse before, not then
        require_metrics("--score-dev", GENERATION_METRICS)
    if args.worker:
        worker(args)
        return 0
    command = shlex.join(["python", *sys.argv])
    machine = machine_info()
    print(f"{len(args.configs)} configurations x {args.repeats}, {args.steps} steps each, on {machine['device']} "
          f"with {args.threads} threads")
    runs = []
    for repeat in range(args.repeats):
        order = args.configs if repeat % 2 == 0 else args.configs[::-1]
        for name in order:
            result = run_worker(args, name)
            if result is not None:
                runs.append({**result, "repeat": repeat})
    if not runs:
        return 1
    summary = summarise(runs)
    ratios = compute_ratios(summary)
    notes = disturbances(runs)
    print_report(command, machine, summary, ratios, notes)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "command": command, "machine": machine, "settings": {k: v for k, v in vars(args).items() if k != "worker"},
            "warmup_steps_untimed": WARMUP_STEPS, "runs": runs, "summary": summary, "ratios": ratios,
            "disturbances": notes}, indent=2) + "\n")
        print(f"\nwrote {args.json_out}")
    return 0 if len(runs) == len(args.configs) * args.repeats else 1


if __name__ == "__main__":
    sys.exit(main())
