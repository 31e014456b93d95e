"""Decoding speed: lorakit.decode against Hugging Face ``generate`` on the same model, adapter and inputs.

Model: SmolLM2-135M with a fresh r=8 LoRA on q_proj, v_proj (B non-zero, so the adapter acts), decoded
unmerged and merged; or a trained adapter (--adapter), whose outputs end at EOS like real E2E text.
Inputs: E2E dev prompts (``source + "\\n"``), sorted by length and cut into the same batches for both sides.

1. Greedy: generated tokens/s (EOS included, padding after EOS not counted) at each --batch-sizes over
   --batches batches of prompts: HF runs batch after batch, lorakit gets all the prompts at the same batch
   size (it refills finished rows). Measured alternately, median of --repeats; the tokens must be the same.
2. Beam search (paper E2E settings: beam 10, length penalty 0.9, no_repeat_ngram_size 4, 64 new tokens):
   wall time over --beam-inputs dev inputs (547 = the whole dev set) for lorakit, and over --hf-beam-inputs
   for HF (0 skips it; HF is slow, so a subset is reported per input).

    LORAKIT_DATA=../shared/data .venv/bin/python benchmarks/generate_speed.py --quick
    LORAKIT_DATA=../shared/data .venv/bin/python benchmarks/generate_speed.py --beam-inputs 547 --hf-beam-inputs 32

Timings on a shared machine are disturbed by other work: compare the ratios of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

import lorakit
from lorakit import LoraConfig
from lorakit.decode import DecodeConfig, generate_ids, length_batches, preset
from lorakit.hardware import describe
from lorakit.models import load_model
from lorakit.tasks import get_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", help="data root (default: $LORAKIT_DATA)")
    p.add_argument("--adapter", help="a trained adapter folder instead of the fresh random one (realistic lengths)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="both sides use it")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--batches", type=int, default=2, help="greedy: batches per measurement")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy: max new tokens")
    p.add_argument("--repeats", type=int, default=3, help="greedy: measurements per side (median reported)")
    p.add_argument("--variants", nargs="+", default=["unmerged", "merged"], choices=["unmerged", "merged"])
    p.add_argument("--beam-inputs", type=int, default=32, help="beam: dev inputs for lorakit (547 = all)")
    p.add_argument("--hf-beam-inputs", type=int, default=None, help="beam: dev inputs for HF (default: same; 0 skips)")
    p.add_argument("--beam-batch-size", type=int, default=16, help="beam: inputs per batch (x10 rows)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="where both sides run: cpu (default), cuda, ...")
    p.add_argument("--quick", action="store_true", help="a 1-2 minute smoke run: batch 8, 16 tokens, 8 beam inputs")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.batches, args.new_tokens, args.repeats = [8], 1, 16, 2
        args.beam_inputs, args.variants = 8, ["merged"]
    if args.hf_beam_inputs is None:
        args.hf_beam_inputs = args.beam_inputs
    return args


def build_model(name: str, seed: int = 0, adapter: str | None = None, dtype: str = "float32"):
    """The base model with a fresh q/v LoRA whose B is non-zero (a zero B would be the base model), or with
    the adapter saved in ``adapter``."""
    model, tokenizer = load_model(name, padding_side="left", dtype=getattr(torch, dtype))
    if adapter:
        lorakit.load_adapter(model, adapter)
        return model.eval(), tokenizer
    torch.manual_seed(seed)  # A's initialisation draws from the global generator
    lorakit.add_adapter(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lorakit.lora_layers(model):
            weight = layer.lora_B["default"].weight
            weight.copy_(torch.randn(weight.shape, generator=g) * 0.01)
    return model.eval(), tokenizer


def hf_generate(model, rows: list[list[int]], pad: int, eos: int, **kwargs) -> list[list[int]]:
    """HF ``generate`` on one left-padded batch; new tokens up to and including the first EOS."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=model.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=pad, eos_token_id=eos, **kwargs)
    new = out[:, width:].tolist()
    return [row[:row.index(eos) + 1] if eos in row else row for row in new]


def ours_generate(model, rows: list[list[int]], config: DecodeConfig, pad: int, eos: int,
                  batch_size: int) -> list[list[int]]:
    """lorakit's tokens with the final EOS put back, to count and compare like HF's."""
    outs = generate_ids(model, rows, config, eos_token_id=eos, pad_token_id=pad, batch_size=batch_size)
    return [[*o, eos] if len(o) < config.max_new_tokens else o for o in outs]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def ours_batches(model, batches, config: DecodeConfig, pad: int, eos: int) -> list[list[int]]:
    """All the batches' prompts in one call at the same batch size: lorakit refills a finished row's slot
    with the next prompt, where HF runs each batch until its longest row is done."""
    return ours_generate(model, [p for b in batches for p in b], config, pad, eos, max(map(len, batches)))


def hf_batches(model, batches, pad: int, eos: int, **kwargs) -> list[list[int]]:
    return [o for b in batches for o in hf_generate(model, b, pad, eos, **kwargs)]


def bench_greedy(model, prompts: list[list[int]], args, pad: int, eos: int, variant: str) -> list[dict]:
    results = []
    for bs in args.batch_sizes:
        batches = [[prompts[i] for i in b] for b in length_batches([len(p) for p in prompts], bs)][:args.batches]
        config = DecodeConfig("greedy", max_new_tokens=args.new_tokens)
        ours_t, hf_t, same = [], [], True
        tokens = 0
        for _ in range(args.repeats):  # alternate the two sides so load changes hit both alike
            t, ours = timed(ours_batches, model, batches, config, pad, eos)
            ours_t.append(t)
            t, hf = timed(hf_batches, model, batches, pad, eos, max_new_tokens=args.new_tokens, do_sample=False)
            hf_t.append(t)
            same &= ours == hf
            tokens = sum(map(len, ours))
        row = {"bench": "greedy", "variant": variant, "batch_size": bs, "inputs": sum(map(len, batches)),
               "generated_tokens": tokens, "lorakit_s": statistics.median(ours_t), "hf_s": statistics.median(hf_t),
               "same_tokens": same}
        row["lorakit_tok_s"] = tokens / row["lorakit_s"]
        row["hf_tok_s"] = tokens / row["hf_s"]
        row["speedup"] = row["lorakit_tok_s"] / row["hf_tok_s"]
        print(f"greedy  {variant:8s} batch {bs:3d}: lorakit {row['lorakit_tok_s']:7.1f} tok/s, "
              f"HF {row['hf_tok_s']:7.1f} tok/s -> {row['speedup']:.2f}x  ({tokens} tokens, "
              f"same tokens: {same}; times lorakit {_fmt(ours_t)} HF {_fmt(hf_t)})", flush=True)
        results.append(row)
    return results


def bench_beam(model, prompts: list[list[int]], args, pad: int, eos: int, variant: str) -> dict:
    config = preset("e2e")
    bs = args.beam_batch_size
    ours_s, ours = timed(ours_generate, model, prompts[:args.beam_inputs], config, pad, eos, bs)
    row = {"bench": "beam", "variant": variant, "inputs": args.beam_inputs, "lorakit_s": ours_s,
           "lorakit_s_per_input": ours_s / args.beam_inputs, "batch_size": bs, "config": str(config)}
    print(f"beam-10 {variant:8s}: lorakit {ours_s:7.1f} s for {args.beam_inputs} inputs "
          f"({row['lorakit_s_per_input']:.2f} s/input; full dev of 547 ~ "
          f"{547 * row['lorakit_s_per_input'] / 60:.1f} min)", flush=True)
    n_hf = min(args.hf_beam_inputs, len(prompts))
    if n_hf:
        subset = prompts[:n_hf]
        batches = [[subset[i] for i in b] for b in length_batches([len(p) for p in subset], bs)]
        hf_s, hf = timed(hf_batches, model, batches, pad, eos, max_new_tokens=config.max_new_tokens,
                         num_beams=config.num_beams, length_penalty=config.length_penalty,
                         no_repeat_ngram_size=config.no_repeat_ngram_size, early_stopping=True, do_sample=False)
        order = [i for b in length_batches([len(p) for p in subset], bs) for i in b]
        hf_in_order = [None] * n_hf
        for i, out in zip(order, hf, strict=True):
            hf_in_order[i] = out
        same = sum(a == b for a, b in zip(ours[:n_hf], hf_in_order, strict=True))
        row.update(hf_inputs=n_hf, hf_s=hf_s, hf_s_per_input=hf_s / n_hf, same_outputs=same,
                   speedup=(hf_s / n_hf) / row["lorakit_s_per_input"])
        print(f"beam-10 {variant:8s}: HF      {hf_s:7.1f} s for {n_hf} inputs ({row['hf_s_per_input']:.2f} s/input)"
              f" -> {row['speedup']:.2f}x per input; identical outputs {same}/{n_hf}", flush=True)
    return row


def _fmt(times: list[float]) -> str:
    return "/".join(f"{t:.2f}" for t in times) + " s"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {describe()}; torch threads={torch.get_num_threads()}; python {platform.python_version()}, "
          f"transformers {transformers.__version__}; load average {os.getloadavg()}", flush=True)
    model, tokenizer = build_model(args.model, adapter=args.adapter, dtype=args.dtype)
    model.to(args.device)  # the outputs come back as lists, so every timed call ends synchronised
    adapter = args.adapter or "fresh r=8 q_proj/v_proj LoRA, B ~ N(0, 0.01)"
    print(f"model: {args.model} ({args.dtype}, {args.device}) + {adapter}")
    task = get_task("e2e")
    sources = [task.prompt(ex.source) for ex in task.examples("dev", args.data)]
    prompts = tokenizer(sources, add_special_tokens=False)["input_ids"]
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    # warm-up both paths (first calls allocate and pick kernels)
    ours_generate(model, prompts[:2], DecodeConfig(max_new_tokens=4), pad, eos, 2)
    hf_generate(model, prompts[:2], pad, eos, max_new_tokens=4, do_sample=False)

    results = []
    for variant in args.variants:
        if variant == "merged":
            lorakit.merge_adapters(model)
        results += bench_greedy(model, prompts, args, pad, eos, variant)
        if args.beam_inputs:
            results.append(bench_beam(model, prompts, args, pad, eos, variant))
        if variant == "merged":
            lorakit.unmerge_adapters(model)
    print(f"load average at the end {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
