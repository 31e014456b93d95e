"""Every script in ``benchmarks/`` runs end to end on a tiny random model (``rte_probe.py``: the packaged
MiniLM it analyses, on 60 pairs) and prints its ratio or result lines.

Why: benchmarks are run by hand, rarely, so a refactor that breaks one would go unnoticed until someone
wants its numbers (``train_throughput.py`` once failed this way). These runs check the scripts work, not
their numbers: the models are random or the inputs few, and the timings are meaningless.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, shared_data_dir
from transformers import LlamaConfig, LlamaForCausalLM

from lorakit.models import gpt2_tokenizer

DATA = shared_data_dir()
pytestmark = pytest.mark.skipif(DATA is None, reason="the shared E2E data is needed for the benchmarks' prompts")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A local model folder (random Llama, GPT-2 vocabulary and tokenizer) that ``load_model`` reads offline."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    eos = 50256
    config = LlamaConfig(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


def run_benchmark(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "LORAKIT_DATA": str(DATA), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert re.search(r"machine: .*cores", proc.stdout), proc.stdout[:2000]  # every number names its machine
    return proc.stdout


def test_train_throughput(tiny_model, tmp_path):
    out = run_benchmark("train_throughput.py", "--model", str(tiny_model), "--steps", "3", "--batch-size", "2",
                        "--examples", "16", "--configs", "lorakit-lora", "hf-peft-lora", "--score-dev", "3",
                        cwd=tmp_path)
    assert re.search(r"^throughput lorakit-lora / hf-peft-lora: \d+\.\d+x", out, re.M), out
    for name in ("lorakit-lora", "hf-peft-lora"):  # both sides' models decoded and scored on 3 dev MRs
        assert re.search(rf"^  {name} +BLEU \d\.\d{{4}}  NIST \d+\.\d{{4}}", out, re.M), out


def test_generate_speed(tiny_model, tmp_path):
    out = run_benchmark("generate_speed.py", "--model", str(tiny_model), "--batch-sizes", "2", "--batches", "1",
                        "--new-tokens", "4", "--repeats", "1", "--variants", "merged", "--beam-inputs", "0",
                        cwd=tmp_path)
    assert re.search(r"greedy\s+merged\s+batch\s+2: lorakit .* -> \d+\.\d+x .*same tokens: True", out), out


def test_serve_forward(tiny_model, tmp_path):
    out = run_benchmark("serve_forward.py", "--model", str(tiny_model), "--rows", "4", "--tokens", "8",
                        "--adapters", "2", "--rank", "2", "--repeats", "1", cwd=tmp_path)
    assert re.search(r"lorakit-mixed\s+\d+\.\d+ ms\s+\d+\.\d+x base", out), out
    diff = float(re.search(r"max \|logit diff\| ([\d.e+-]+)", out).group(1))
    assert diff < 1e-4, out  # lorakit's routed adapters and PEFT's give the same logits


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_serve_forward_over_a_quantized_base(tiny_model, tmp_path, monkeypatch, mode):
    """Mixed rows against each adapter routed alone (exact for bf16; int8's batch-wide activation scale makes
    that comparison unfit, which the output says), PEFT left out."""
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    out = run_benchmark("serve_forward.py", "--model", str(tiny_model), "--rows", "4", "--tokens", "8",
                        "--adapters", "2", "--rank", "2", "--repeats", "1", "--quantize", mode, cwd=tmp_path)
    assert f"base quantize={mode}" in out and "peft" not in out, out
    assert re.search(r"lorakit-mixed\s+\d+\.\d+ ms\s+\d+\.\d+x base", out), out
    diff = float(re.search(r"lorakit vs each adapter alone max \|logit diff\| ([\d.e+-]+)", out).group(1))
    assert (diff == 0.0) if mode == "bf16" else "(not checked for int8)" in out, out


def test_serve_switch(tiny_model, tmp_path):
    out = run_benchmark("serve_switch.py", "--model", str(tiny_model), "--rank", "2", "--repeats", "2", cwd=tmp_path)
    for kind in ("qv", "all7"):
        assert re.search(rf"^ratio {kind}: load\+switch lorakit/PEFT \d+\.\d+x, switch lorakit/PEFT \d+\.\d+x",
                         out, re.M), out


def test_serve_load(tiny_model, tmp_path):
    out = run_benchmark("serve_load.py", "--model", str(tiny_model), "--clients", "2", "--requests", "10",
                        "--sequential", "5", "--adapters", "5", "--max-loaded", "2", "--max-tokens", "4",
                        "--quantize", "none", "bf16", cwd=tmp_path)
    for mode in ("none", "bf16"):  # the whole test against each server
        assert re.search(rf"^ratio \({mode}\): concurrent / one-at-a-time throughput \d+\.\d+x, 0 failed of 10$",
                         out, re.M), out
    assert re.search(r"^ratio: served throughput --quantize bf16 / fp32 \d+\.\d+x \(one at a time: \d+\.\d+x\)$",
                     out, re.M), out


def test_quant_speed(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))  # the load part fills a quantized cache
    out = run_benchmark("quant_speed.py", "--model", str(tiny_model), "--quick", "--quality-prompts", "2",
                        "--new-tokens", "4", "--train-steps", "3", "--train-batch", "2", "--outlier-layers", "1",
                        cwd=tmp_path)
    assert re.search(r"^quality int8\s+: logits relative error \d+\.\d+, top-1 agreement", out, re.M), out
    assert re.search(r"^outlier ratio of each int8 layer's input, largest first: \S+ \d+", out, re.M), out
    assert re.search(r"^quality int8, 1 outlier layers bf16: logits relative error \d+\.\d+", out, re.M), out
    assert re.search(r"greedy batch 8: lorakit int8 .* -> \d+\.\d+x HF fp32, \d+\.\d+x lorakit fp32, \d+\.\d+x HF "
                     r"on the same base; .*; model forward \d+\.\d% of the time", out), out
    assert re.search(r"^train int8 : .* throughput \d+\.\d+x, peak RSS \d+\.\d+x", out, re.M), out
    assert re.search(r"^load int8  cached: .* -> \d+\.\d+x the time and \d+\.\d+x the peak of quantizing; "
                     r"cache entry (?!0\.00)\d+\.\d\d MiB", out, re.M), out  # the entry was found and is not empty


def test_int8_smoothing(tiny_model, tmp_path):
    out = run_benchmark("int8_smoothing.py", "--model", str(tiny_model), "--prompts", "2", "--alphas", "0.5",
                        "--per-row", cwd=tmp_path)
    numbers = r"\d\.\d{4} \| \d\.\d{3} \|$"  # relative error, top-1 agreement
    for scale in ("per call (lorakit's kernel)", "per row (simulated)"):
        assert re.search(rf"^\| {re.escape(scale)} \| none \(plain int8\) \| \| " + numbers, out, re.M), out
        for calibration in ("E2E dev prompts 100-131", "generic English and code"):
            assert re.search(rf"^\| {re.escape(scale)} \| {calibration}.* \| 0\.5 \| " + numbers, out, re.M), out


@pytest.mark.skipif(DATA is None or not (DATA / "glue" / "RTE").is_dir(), reason="needs the shared RTE data")
def test_rte_probe(tmp_path):
    """The RTE analysis on 60 pairs with the real packaged MiniLM (the encoder whose features it probes, not a
    random one): every baseline and probe prints a number."""
    predictions = tmp_path / "rte.txt"
    predictions.write_text("entailment\n" * 60, encoding="utf-8")
    out = run_benchmark("rte_probe.py", "--limit", "60", "--predictions", str(predictions), cwd=tmp_path)
    for line in ("majority class on dev: ", "word overlap, threshold tuned on train: ",
                 "frozen probe, separate sentences [u, v, |u-v|, u*v]: train ", "frozen probe, the pair as one"):
        assert re.search(re.escape(line) + r".*\d\.\d{4}", out), out
    assert re.search(r"predictions .*rte.txt: \{0: 60\}, accuracy 0\.\d{4}", out), out


def test_repair_e2e(tiny_model, tmp_path):
    import lorakit
    from lorakit import LoraConfig
    from lorakit.models import load_model

    model, _ = load_model(str(tiny_model))
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lorakit.save_adapter(model, tmp_path / "adapter")
    out = run_benchmark("repair_e2e.py", "--model", str(tiny_model), "--adapter", str(tmp_path / "adapter"),
                        "--limit", "2", "--samples", "1", "--no-meteor", cwd=tmp_path)
    assert re.search(r"^2 of 2 greedy outputs have slot errors", out, re.M), out  # a random model's text
    for rule in ("greedy", "beams, ties: first", "samples, ties: consensus", "beams \\+ samples, ties: consensus"):
        assert re.search(rf"^\| {rule} \| \d\.\d{{4}} \| .* \| \d+\.\d\d \| \d \|$", out, re.M), out


def test_rerank_e2e(tiny_model, tmp_path):
    import lorakit
    from lorakit import LoraConfig
    from lorakit.models import load_model

    model, _ = load_model(str(tiny_model))
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lorakit.save_adapter(model, tmp_path / "adapter")
    out = run_benchmark("rerank_e2e.py", "--model", str(tiny_model), "--adapter", str(tmp_path / "adapter"),
                        "--limit", "3", "--beams", "2", "--length-penalty", "0.9", "1.0", "--outputs",
                        str(tmp_path / "out"), cwd=tmp_path)
    for lp in ("0.9", "1.0"):  # both picks of both settings scored, from the same beams
        for pick in ("top beam", "reranked"):
            assert re.search(rf"^\| 2 \| {lp} \| {pick} \| \d\.\d{{4}} \| .* \| \d+\.\d\d \|", out, re.M), out
            assert len((tmp_path / "out" / f"beam2-lp{lp}-{pick.replace(' ', '-')}.txt").read_text().splitlines()) == 3
    assert re.search(r"^reranked 3 n-best lists by slot errors: \d picks changed", out, re.M), out


def test_gpu_check_library_checks_run_on_the_cpu(tmp_path):
    """The GPU check (docs/gpu.md) runs by hand on a lent GPU; its in-process checks run here on the CPU so that
    the script keeps working (its CLI checks repeat what test_train*, test_decode and test_serve* cover)."""
    out = run_benchmark("gpu_check.py", "--device", "cpu", "--only", "layers", "quantized", "routing", "decoding",
                        "probe", "--json", str(tmp_path / "check.json"), cwd=tmp_path)
    assert re.search(r"^6/6 checks passed or skipped$", out, re.M), out
    assert re.search(r"^PASS quantize auto: .*auto -> (none|bf16); ms per decode-step pass: none \d", out, re.M), out
    results = json.loads((tmp_path / "check.json").read_text())["results"]
    assert [r["status"] for r in results] == ["PASS"] * 6, results
