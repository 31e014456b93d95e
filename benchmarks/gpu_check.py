"""The GPU paths, checked on small random models: what CI (CPU only) never runs.

Each check prints PASS, FAIL (with the error) or SKIP and a one-line detail; the script exits 1 if any
failed, and ``--json`` keeps the table. Library checks run in this process on tiny random GPT-2 (Conv1D,
fused q/k/v), Llama, RoBERTa and BERT models; CLI checks run ``lorakit train / generate / serve`` and
``torchrun`` as a user would, on tiny model folders written first, with the real tokenizers:

- layers: LoRA forward on the device equals the CPU's, merge then unmerge restores the weights, and only
  LoRA factors get gradients (fp32); the same model in bf16 and fp16 runs, merges and stays near fp32;
- quantized base: bf16 / nf4 / int4 base on the device, LoRA gradients through it, merge refused, int8
  refused with its reason (its kernel is the CPU's);
- routing: rows of a mixed batch routed to 3 adapters equal each adapter alone;
- decoding: greedy and beam search give the CPU's tokens, seeded sampling repeats itself;
- train: ``lorakit train`` with --precision bf16 (Llama, evaluated while training), fp16 (GPT-2, the grad
  scaler), --quantize nf4, a classification file (BERT), and ``torchrun`` (DDP on two processes: NCCL
  needs two GPUs, gloo runs on the CPU; with one GPU, one process);
- generate / serve: ``lorakit generate`` (greedy, beam, sampling) and ``lorakit serve --dtype bfloat16``
  with two adapters answering mixed concurrent requests over HTTP on 127.0.0.1; its greedy answers are
  counted against ``lorakit generate``'s (fp32) for the same adapter, not required to be equal.

Without a GPU it runs on the CPU (what CI checks: the script itself stays runnable); fp16 training then
skips. On a machine without the packaged tokenizers, ``--prepare DIR`` here writes them (and SmolLM2-135M's
config and tokenizer, for ``--smollm2-random``: a random-weight model of its shape for speed runs) to carry.

    .venv/bin/python benchmarks/gpu_check.py --prepare .gpu/assets             # here
    python benchmarks/gpu_check.py --assets .gpu/assets --json out.json        # on the GPU machine
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)

import lorakit  # noqa: E402
from lorakit.decode import DecodeConfig, generate_ids  # noqa: E402
from lorakit.hardware import describe, resolve_device  # noqa: E402
from lorakit.quant import quantize_model  # noqa: E402

VOCAB = 96
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
Check = Callable[[argparse.Namespace], str]
CHECKS: list[tuple[str, Check]] = []


def check(name: str) -> Callable[[Check], Check]:
    """Register a check: it returns a detail line, raises on failure, or raises ``Skip``."""
    def register(fn: Check) -> Check:
        CHECKS.append((name, fn))
        return fn
    return register


class Skip(Exception):
    """A check that does not apply here (fp16 training on the CPU, a missing earlier result)."""


def tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=64))
    if arch == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=80, num_labels=3))
    return BertForSequenceClassification(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64,
                                                    max_position_embeddings=64, num_labels=2))


ARCHS = ("gpt2", "llama", "roberta", "bert")
TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "roberta": ["query", "value"],
           "bert": ["query", "value"]}


def lora_config(arch: str) -> lorakit.LoraConfig:
    """r=4 on the architecture's q and v (GPT-2: the fused c_attn's q and v parts), A and B random."""
    return lorakit.LoraConfig(r=4, target_modules=TARGETS[arch], init_lora_weights=False,
                              fused_modules={"c_attn": [True, False, True]} if arch == "gpt2" else {})


def adapted(arch: str, device: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """A tiny model with one adapter whose B is non-zero (so it changes the output)."""
    model = tiny(arch, seed)
    lorakit.add_adapter(model, lora_config(arch), "a")
    return model.to(device=device, dtype=dtype).eval()


def ids(device: str, rows: int = 3, length: int = 12) -> torch.Tensor:
    return torch.randint(3, VOCAB, (rows, length), generator=torch.Generator().manual_seed(1)).to(device)


def out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x).logits.float()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm().clamp_min(1e-12))


@check("layers: fp32 on the device = CPU; merge/unmerge; LoRA-only gradients")
def layers_fp32(args) -> str:
    details = []
    for arch in ARCHS:
        cpu, dev = adapted(arch, "cpu"), adapted(arch, args.device)
        x = ids(args.device)
        error = rel(out(dev, x), out(cpu, x.cpu()))
        assert error < 1e-4, f"{arch}: device vs CPU relative error {error:.2e}"
        before = lorakit.base_state_dict(dev)
        unmerged = out(dev, x)
        lorakit.merge_adapters(dev)
        merged_error = rel(out(dev, x), unmerged)
        lorakit.unmerge_adapters(dev)
        restored = lorakit.max_weight_change(dev, before)
        assert merged_error < 1e-4 and restored < 1e-5, f"{arch}: merged {merged_error:.2e}, unmerge {restored:.2e}"
        dev.train()
        dev(input_ids=x).logits.float().pow(2).mean().backward()
        with_grad = {n for n, p in dev.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert with_grad and all("lora_" in n for n in with_grad), f"{arch}: gradients on {sorted(with_grad)[:3]}"
        details.append(f"{arch} {error:.1e}")
    return "device vs CPU relative error: " + ", ".join(details)


@check("layers: bf16 and fp16 models run, merge and stay near fp32")
def layers_half(args) -> str:
    details = []
    for dtype in (torch.bfloat16, torch.float16):
        if args.device == "cpu" and dtype == torch.float16:
            continue
        for arch in ARCHS:
            ref, half = adapted(arch, args.device), adapted(arch, args.device, dtype)
            x = ids(args.device)
            unmerged = out(half, x)
            error = rel(unmerged, out(ref, x))
            assert torch.isfinite(unmerged).all() and error < 0.05, f"{arch} {dtype}: relative error {error:.3f}"
            before = lorakit.base_state_dict(half)
            lorakit.merge_adapters(half)
            assert rel(out(half, x), unmerged) < 0.05, f"{arch} {dtype}: merge moved the output"
            lorakit.unmerge_adapters(half)
            restored = lorakit.max_weight_change(half, before)
            assert restored < 0.02, f"{arch} {dtype}: unmerge left the weights {restored:.3f} away"
            details.append(f"{arch}/{str(dtype)[6:]} {error:.3f}")
    return "relative error vs fp32: " + ", ".join(details)


@check("quantized base on the device: bf16/nf4/int4; gradients; merge refused; int8 refused")
def quantized_base(args) -> str:
    details = []
    for arch in ("llama", "gpt2"):
        for mode in ("bf16", "nf4", "int4"):
            ref = adapted(arch, args.device)
            model = tiny(arch)
            summary = quantize_model(model, mode)
            lorakit.add_adapter(model, lora_config(arch), "a")
            model.to(args.device).eval()
            x = ids(args.device)
            error = rel(out(model, x), out(ref, x))
            assert error < 0.3, f"{arch} {mode}: relative error {error:.3f}"
            model.train()
            model(input_ids=x).logits.float().pow(2).mean().backward()
            lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
            assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads), \
                f"{arch} {mode}: a LoRA factor got no gradient"
            try:
                lorakit.merge_adapters(model)
            except (ValueError, RuntimeError) as err:
                assert "quantiz" in str(err), f"merge refused without saying why: {err}"
            else:
                raise AssertionError(f"{arch} {mode}: merging into a quantized base was not refused")
            details.append(f"{arch}/{mode} ({len(summary.layers)} layers) {error:.3f}")
    if args.device != "cpu":
        model = tiny("llama")
        quantize_model(model, "int8")
        try:
            model.to(args.device)
        except RuntimeError as err:
            details.append(f"int8 to {args.device} refused: {str(err)[:60]}...")
        else:
            raise AssertionError("an int8 base moved to the GPU without a word")
    return "relative error vs fp32: " + ", ".join(details)


@check("routing: a mixed batch of 3 adapters = each adapter alone")
def routing(args) -> str:
    worst = 0.0
    for arch in ("llama", "gpt2"):
        model = adapted(arch, "cpu")
        for name in ("b", "c"):  # random A and B each (init_lora_weights=False), so each adapter differs
            lorakit.add_adapter(model, lorakit.adapter_config(model, "a"), name)
        model.to(args.device).eval()
        x = ids(args.device, rows=6)
        rows = ["a", "b", "c", None, "b", "a"]
        with torch.no_grad(), lorakit.route_rows(model, rows):
            mixed = out(model, x)
        for i, name in enumerate(rows):
            with torch.no_grad(), lorakit.route_rows(model, [name]):
                alone = out(model, x[i:i + 1])
            worst = max(worst, float((mixed[i] - alone[0]).abs().max()))
        outputs = {}
        for name in ("a", "b", "c", None):  # the first row under each adapter: they must all differ
            with torch.no_grad(), lorakit.route_rows(model, [name]):
                outputs[name] = out(model, x[:1])
        names = list(outputs)
        assert all((outputs[p] - outputs[q]).abs().max() > 1e-3 for i, p in enumerate(names) for q in names[i + 1:]), \
            f"{arch}: two of the adapters (or an adapter and the base) give the same output"
    assert worst < 1e-4, f"mixed rows differ from each adapter alone by {worst:.2e}"
    return f"max |mixed - alone| {worst:.1e} (Llama, GPT-2)"


@check("decoding: greedy and beam give the CPU's tokens; seeded sampling repeats")
def decoding(args) -> str:
    prompts = [list(range(5, 5 + n)) for n in (3, 7, 5, 9)]
    details = []
    for arch in ("llama", "gpt2"):
        cpu, dev = adapted(arch, "cpu"), adapted(arch, args.device)
        for config in (DecodeConfig(max_new_tokens=12, stop_at_eos=False),
                       DecodeConfig(strategy="beam", num_beams=4, length_penalty=0.9, no_repeat_ngram_size=4,
                                    max_new_tokens=12)):
            here = generate_ids(cpu, prompts, config, eos_token_id=2, pad_token_id=0)
            there = generate_ids(dev, prompts, config, eos_token_id=2, pad_token_id=0)
            assert here == there, f"{arch} {config.strategy}: device tokens {there} != CPU {here}"
        sample = DecodeConfig(strategy="sample", temperature=0.8, top_k=20, top_p=0.9, seed=3, max_new_tokens=12)
        first, again = (generate_ids(dev, prompts, sample, eos_token_id=2, pad_token_id=0) for _ in range(2))
        assert first == again, f"{arch}: seeded sampling gave different tokens"
        details.append(arch)
    return "greedy, beam (4, lp 0.9, no-repeat 4), sampling: " + ", ".join(details)


@check("quantize auto: the probe measures on the device")
def probe(args) -> str:
    from lorakit.quant import choose_mode
    from lorakit.quant.formats import int8_kernel_available
    from lorakit.quant.probe import CACHE_NAME, probe_key

    with tempfile.TemporaryDirectory() as home, mock.patch.dict(os.environ, {"LORAKIT_HOME": home}):
        mode = choose_mode(refresh=True, device=args.device)
        ms = json.loads((Path(home) / CACHE_NAME).read_text())[probe_key(args.device)]["ms"]  # what it chose by
    assert "none" in ms and "bf16" in ms, f"the probe could not run fp32 and bf16: {ms}"
    int8_here = args.device == "cpu" and int8_kernel_available()
    assert ("int8" in ms) == int8_here, f"int8 {'not ' if int8_here else ''}measured on {args.device}: {ms}"
    return f"auto -> {mode}; ms per decode-step pass: " + ", ".join(f"{m} {v:.3f}" for m, v in ms.items())


# ---- the CLI, as a user runs it --------------------------------------------------------------------------

def tokenizer(args, name: str):
    """The GPT-2 BPE or MiniLM WordPiece tokenizer: from --assets, else from the installed packages."""
    from transformers import AutoTokenizer

    if args.assets:
        return AutoTokenizer.from_pretrained(Path(args.assets) / name)
    from lorakit.models import gpt2_tokenizer, load_tokenizer
    return gpt2_tokenizer() if name == "gpt2-tokenizer" else load_tokenizer("minilm-l6")


def write_folders(args, root: Path) -> dict[str, Path]:
    """Tiny model folders with real tokenizers, and the user files they train on."""
    gpt2_tok, bert_tok = tokenizer(args, "gpt2-tokenizer"), tokenizer(args, "minilm-tokenizer")
    folders = {}
    torch.manual_seed(0)
    vocab, eos = len(gpt2_tok), gpt2_tok.eos_token_id
    for name, model in (
        ("llama", LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               max_position_embeddings=256, bos_token_id=eos, eos_token_id=eos,
                                               pad_token_id=eos, tie_word_embeddings=True))),
        ("gpt2", GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                            bos_token_id=eos, eos_token_id=eos))),
    ):
        model.save_pretrained(root / name)
        gpt2_tok.save_pretrained(root / name)
        folders[name] = root / name
    BertForSequenceClassification(BertConfig(vocab_size=bert_tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=128,
                                             max_position_embeddings=128)).save_pretrained(root / "bert")
    bert_tok.save_pretrained(root / "bert")
    folders["bert"] = root / "bert"
    foods, areas = ["Chinese", "French", "Italian", "Indian"], ["city centre", "riverside"]
    for split, n in (("train", 96), ("dev", 8)):
        with (root / f"{split}.jsonl").open("w") as f:
            for i in range(n):
                food, area = foods[i % 4], areas[(i // 4) % 2]
                f.write(json.dumps({"prompt": f"food[{food}], area[{area}]\n",
                                    "completion": f"It serves {food} food in the {area}."}) + "\n")
        with (root / f"{split}.csv").open("w") as f:
            f.write("text,label\n")
            for i in range(n):
                f.write(f"{'a fine' if i % 2 else 'a dull'} film number {i},{'pos' if i % 2 else 'neg'}\n")
    return folders


def lorakit_cli(*argv: str, timeout: float = 300) -> str:
    """Run ``lorakit ...`` in a subprocess; its combined output, or an error with its tail."""
    done = subprocess.run([sys.executable, "-m", "lorakit.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, env=ENV)
    if done.returncode != 0:
        raise AssertionError(f"lorakit {argv[0]} exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}")
    return done.stdout + done.stderr


def losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


TRAIN = ("--max-steps", "30", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "2", "--log-every", "5",
         "--save-every", "30", "--samples", "0")


def trained(args, state: dict, key: str, *argv: str) -> str:
    run = state["root"] / key
    text = lorakit_cli("train", *argv, *TRAIN, "--output", str(run))
    seen = losses(run)
    assert len(seen) >= 2 and all(v == v for v in seen) and seen[-1] < seen[0], f"losses {seen}"
    assert (run / "adapter" / "adapter_model.safetensors").is_file(), "no adapter saved"
    if args.device != "cpu":
        assert args.device in text, f"the run does not say it trained on {args.device}"
    state[key] = run
    return f"loss {seen[0]:.2f} -> {seen[-1]:.2f}"


@check("lorakit train --precision bf16 (Llama; evaluated while training)")
def train_bf16(args) -> str:
    s = args.state
    scored = importlib.util.find_spec("pycocoevalcap") is not None  # the metrics extra (ROUGE-L)
    detail = trained(args, s, "bf16", "--model", str(s["llama"]), "--data", str(s["root"] / "train.jsonl"),
                     "--eval-data", str(s["root"] / "dev.jsonl"), "--eval-every", "15", "--precision", "bf16",
                     *(("--eval-generate", "4") if scored else ()))
    assert (s["bf16"] / "best.json").is_file(), "no best.json after evaluating"
    return detail + ("" if scored else "; loss-only evaluation (no metrics extra here)")


@check("lorakit train --precision fp16 (GPT-2 Conv1D, the grad scaler)")
def train_fp16(args) -> str:
    if args.device == "cpu":
        raise Skip("fp16 autocast training is a GPU path")
    s = args.state
    return trained(args, s, "fp16", "--model", str(s["gpt2"]), "--data", str(s["root"] / "train.jsonl"),
                   "--precision", "fp16")


@check("lorakit train --quantize nf4 (Llama)")
def train_nf4(args) -> str:
    s = args.state
    return trained(args, s, "nf4", "--model", str(s["llama"]), "--data", str(s["root"] / "train.jsonl"),
                   "--quantize", "nf4", "--precision", "bf16")


@check("lorakit train on a labelled file (BERT classification, bf16)")
def train_classify(args) -> str:
    s = args.state
    return trained(args, s, "classify", "--model", str(s["bert"]), "--data", str(s["root"] / "train.csv"),
                   "--eval-data", str(s["root"] / "dev.csv"), "--eval-every", "30", "--precision", "bf16")


@check("torchrun lorakit train: DDP on 2 processes (NCCL with 2 GPUs, gloo on the CPU), else 1 process")
def train_ddp(args) -> str:
    s = args.state
    run = s["root"] / "ddp"
    # NCCL needs a GPU per process: with one GPU, torchrun runs one process and DDP is not set up
    procs = 2 if args.device == "cpu" or torch.cuda.device_count() >= 2 else 1
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "-m",
                           "lorakit.cli", "train", "--model", str(s["llama"]), "--data",
                           str(s["root"] / "train.jsonl"), *TRAIN, "--output", str(run)],
                          capture_output=True, text=True, timeout=300,
                          env=ENV)
    assert done.returncode == 0, f"torchrun exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}"
    assert f"on {procs} process(es)" in done.stdout + done.stderr, "the run does not say how many processes trained"
    seen = losses(run)
    assert seen[-1] < seen[0], f"losses {seen}"
    return f"{procs} process(es){'' if procs > 1 else ' (one GPU: no DDP)'}; loss {seen[0]:.2f} -> {seen[-1]:.2f}"


@check("lorakit generate --device: greedy, beam, sampling")
def generate_cli(args) -> str:
    s = args.state
    if "bf16" not in s:
        raise Skip("no adapter: the bf16 training check failed")
    lines = {}
    for preset in ("greedy", "beam", "sample"):
        path = s["root"] / f"gen-{preset}.txt"
        extra = ("--strategy", "sample", "--temperature", "0.8", "--top-p", "0.9", "--seed", "1") \
            if preset == "sample" else ("--preset", "e2e" if preset == "beam" else preset)
        lorakit_cli("generate", "--model", str(s["llama"]), "--adapter", str(s["bf16"] / "adapter"), "--data",
                    str(s["root"] / "dev.jsonl"), "--output", str(path), "--device", args.device,
                    "--max-new-tokens", "16", "--no-progress", *extra)
        lines[preset] = path.read_text(encoding="utf-8").split("\n")[:-1]
        assert len(lines[preset]) == 8, f"{preset}: {len(lines[preset])} lines for 8 prompts"
    s["greedy"] = lines["greedy"]
    return f"8 lines each; greedy line 1: {lines['greedy'][0][:50]!r}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@check("lorakit serve --device --dtype bfloat16: two adapters, mixed concurrent requests over HTTP")
def serve_cli(args) -> str:
    s = args.state
    if "bf16" not in s or "nf4" not in s:
        raise Skip("needs the bf16 and nf4 training runs' adapters")
    adapters = s["root"] / "adapters"
    shutil.copytree(s["bf16"] / "adapter", adapters / "a")
    shutil.copytree(s["nf4"] / "adapter", adapters / "b")
    port, log = free_port(), s["root"] / "serve.log"
    with log.open("w") as sink:  # a file, not a pipe: nobody reads while it runs, and a pipe can fill up
        server = subprocess.Popen([sys.executable, "-m", "lorakit.cli", "serve", "--model", str(s["llama"]),
                                   "--adapters", str(adapters), "--port", str(port), "--device", args.device,
                                   "--dtype", "bfloat16" if args.device != "cpu" else "float32"],
                                  stdout=sink, stderr=subprocess.STDOUT, env=ENV)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the server did not start: {log.read_text()[-1500:]}") from None
                time.sleep(0.5)
        prompts = [json.loads(line)["prompt"] for line in (s["root"] / "dev.jsonl").read_text().splitlines()]
        jobs = [(name, p) for p in prompts for name in ("a", "b")]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda job: post(base + "/v1/completions", {
                "model": job[0], "prompt": job[1], "max_tokens": 16, "temperature": 0}), jobs))
        texts = {(name, p): a["choices"][0]["text"] for (name, p), a in zip(jobs, answers, strict=True)}
        assert all(texts.values()), "an empty completion"
        metrics = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
        assert "lorakit" in metrics, "no lorakit metrics at /metrics"
        same = sum(texts[("a", p)].strip() == g.strip() for p, g in zip(prompts, s.get("greedy", []), strict=False))
        return (f"{len(jobs)} concurrent requests answered; adapter a's greedy = lorakit generate's on "
                f"{same}/{len(prompts)} (server bf16, generate fp32)")
    finally:
        server.terminate()
        server.wait(timeout=30)


def smollm2_random(assets: Path, folder: Path) -> Path:
    """A random-weight model of SmolLM2-135M's shape and tokenizer (speed runs only: no quality)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(assets / "smollm2")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for item in (assets / "smollm2").iterdir():
        if item.name != "config.json":
            shutil.copy(item, folder / item.name)
    return folder


def prepare(folder: Path) -> None:
    """Here, where the packages are: the tokenizers and SmolLM2's config and tokenizer files, to carry."""
    from lorakit.models import gpt2_tokenizer, load_tokenizer, resolve_model

    gpt2_tokenizer().save_pretrained(folder / "gpt2-tokenizer")
    load_tokenizer("minilm-l6").save_pretrained(folder / "minilm-tokenizer")
    smol = Path(resolve_model("smollm2-135m").location)
    (folder / "smollm2").mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja"):
        if (smol / name).is_file():
            shutil.copy(smol / name, folder / "smollm2" / name)
    print(f"wrote {folder}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=str(resolve_device()), help="default: the GPU when there is one")
    p.add_argument("--assets", help="tokenizers written by --prepare (default: from the installed packages)")
    p.add_argument("--only", nargs="+", metavar="WORD", help="run only the checks whose name has one of these")
    p.add_argument("--prepare", metavar="DIR", help="write the assets to DIR and stop")
    p.add_argument("--smollm2-random", metavar="DIR", help="write a random SmolLM2-shaped model folder and stop")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.prepare:
        prepare(Path(args.prepare))
        return 0
    if args.smollm2_random:
        print(f"wrote {smollm2_random(Path(args.assets), Path(args.smollm2_random))}")
        return 0
    print(f"machine: {describe()}; device {args.device}")
    checks = [(n, fn) for n, fn in CHECKS if not args.only or any(w in n for w in args.only)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if any(n.startswith(("lorakit", "torchrun")) for n, _ in checks):
            args.state = {"root": Path(tmp)} | write_folders(args, Path(tmp))
        for name, fn in checks:
            start = time.perf_counter()
            try:
                status, detail = "PASS", fn(args)
            except Skip as why:
                status, detail = "SKIP", str(why)
            except Exception as err:
                status, detail = "FAIL", f"{type(err).__name__}: {err}"
                traceback.print_exc()
            seconds = time.perf_counter() - start
            results.append({"check": name, "status": status, "detail": detail, "seconds": round(seconds, 1)})
            print(f"{status} {name} ({seconds:.1f} s): {detail}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe(), "device": args.device, "results": results},
                                              indent=1) + "\n")
    failed = [r["check"] for r in results if r["status"] == "FAIL"]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed or skipped" + (f"; FAILED: {failed}"
                                                                                      if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
