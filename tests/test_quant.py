"""A quantized frozen base (``lorakit.quant``): outputs, gradients to LoRA, training, adapter files, merging,
per-row routing, ``auto`` and the settings and flags that ask for it."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import peft
import pytest
import torch
from conftest import VOCAB, logits, make
from train_fixtures import write_e2e, write_tiny_llama
from transformers.pytorch_utils import Conv1D

import lorakit
import lorakit.quant.cache as cache
import lorakit.quant.probe as probe
from lorakit import LoraConfig
from lorakit.adapters.io import read_adapter
from lorakit.cli import build_parser, main
from lorakit.hardware import resolve_device
from lorakit.lora.routing import attach_routed, plan_routed_adapter
from lorakit.models import load_model
from lorakit.quant import (
    FORMATS,
    Int4Weight,
    QuantConv1D,
    QuantizedLayer,
    QuantLinear,
    QuantWeight,
    choose_mode,
    int8_kernel_available,
    quant_mode,
    quantize_model,
    quantized_layers,
)
from lorakit.quant.model import describe as describe_quantized
from lorakit.quant.model import quant_plan
from lorakit.train import TrainConfig
from lorakit.train.config import ConfigError

MODES = [m for m in FORMATS if m != "int8" or int8_kernel_available()]
# Relative logit error against fp32 on the tiny random models (measured 0.003 bf16, 0.009-0.012 int8,
# 0.08-0.16 int4/nf4), with headroom: bf16 rounds to 8 significant bits (~0.4% a value); int8 rounds weights
# to 1/127 of a row's largest and the activations of each call to 1/255 of their range; 4 bits leave
# 1/15 of a block's range.
TOLERANCE = {"bf16": 0.01, "int8": 0.04, "int4": 0.25, "nf4": 0.3}


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def dequantized_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An fp32 model with each quantized layer replaced by a plain one holding its dequantized weight: what
    the quantized model computes, in exact arithmetic (except int8's and bf16's activation rounding)."""
    out = copy.deepcopy(model)
    for path, layer in list(quantized_layers(out)):
        if isinstance(layer, QuantConv1D):
            plain = Conv1D(layer.nf, layer.nx)
        else:
            plain = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            plain.weight.copy_(layer.weight)
        plain.bias = layer.bias
        parent, _, child = path.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, plain)
    return out


# --- outputs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_quantized_outputs_are_close_to_fp32(arch: str, mode: str, ids: torch.Tensor) -> None:
    model = make(arch)
    expected = logits(model, ids)
    output = model.get_output_embeddings()
    summary = quantize_model(model, mode)
    left = [m for _, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))
            and not isinstance(m, QuantizedLayer)]
    # left in fp32: the classification head (trained whole), and the LM head for the 4-bit modes
    assert left == ([model.classifier] if arch == "bert" else [output] if mode in ("int4", "nf4") else [])
    assert rel_error(logits(model, ids), expected) < TOLERANCE[mode]
    assert summary.bytes_after <= summary.bytes_before * (0.5 if mode == "bf16" else 0.35)


@pytest.mark.parametrize("mode", ["int4", "nf4"])
def test_4bit_layers_compute_exactly_with_their_dequantized_weight(mode: str) -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(96, 40)
    layer = QuantLinear(base, mode)
    x = torch.randn(3, 5, 96)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, base.bias))
    assert layer.weight.shape == base.weight.shape and layer.weight.dtype == torch.float32
    assert layer.bias is base.bias  # the bias stays an ordinary (trainable) parameter


def test_int4_reproduces_a_gguf_q4_1_grid_exactly() -> None:
    """SmolLM2 ships as GGUF Q4_1 (blocks of 32: w = d q + m, fp16 d and m): int4 stores it losslessly."""
    g = torch.Generator().manual_seed(0)
    d = (torch.rand(60, 1, generator=g) * 0.01).half().float()
    m = (torch.randn(60, 1, generator=g) * 0.05).half().float()
    q = torch.randint(0, 16, (60, 32), generator=g)
    q[:, 0], q[:, 1] = 0, 15  # Q4_1 takes each block's min and max as its range
    w = (d * q + m).view(20, 96)
    assert torch.equal(Int4Weight(w).dequantize(), w)


def test_formats_keep_their_precision_and_int8_stays_on_the_cpu(ids: torch.Tensor) -> None:
    model = make("llama")
    quantize_model(model, "int4")
    layer = model.model.layers[0].self_attn.q_proj
    model.to(torch.bfloat16)  # norms and embeddings follow; stored codes and fp16 scales do not
    assert layer.qweight.codes.dtype == torch.uint8 and layer.qweight.scale.dtype == torch.float16
    if int8_kernel_available():
        q8 = make("llama")
        quantize_model(q8, "int8")
        with pytest.raises(RuntimeError, match="int8 weights stay on the CPU"):
            q8.to("meta")


def test_a_mixed_plan_quantizes_only_the_named_layers_then_the_rest(ids: torch.Tensor) -> None:
    model = make("llama")
    kept = {"model.layers.0.mlp.down_proj", "lm_head"}
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.nope' is not a layer left to quantize in bf16"):
        quantize_model(model, "bf16", only={"model.layers.0.nope", *kept})
    assert quant_mode(model) is None  # refused before any layer changed
    assert sorted(quantize_model(model, "bf16", only=kept).layers) == sorted(kept)
    rest = quantize_model(model, "int4", head=False)  # the layers quantized already are left as they are
    assert not kept & set(rest.layers) and len(rest.layers) == len(quant_plan(make("llama"), "int4")) - 1
    assert model.model.layers[0].mlp.down_proj.quant_mode == "bf16" and model.lm_head.quant_mode == "bf16"
    assert model.model.layers[0].mlp.up_proj.quant_mode == "int4"
    assert re.match(r"\d+ linear layers in int4, 2 linear layers in bf16 \(", describe_quantized(model))
    assert logits(model, ids).isfinite().all()


# --- training through a quantized base -----------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_every_lora_factor_through_quantized_layers(mode: str, ids: torch.Tensor) -> None:
    """Backward gives each quantized layer's input ``grad @ W`` (W dequantized): the same gradients as an
    fp32 model holding the dequantized weights, exactly for the 4-bit modes (their forward is exact too) and
    within the activation rounding of bf16 and int8; and loosely the fp32 model's own."""
    fp32 = make("llama")
    model = copy.deepcopy(fp32)
    quantize_model(model, mode)
    same_weights = dequantized_copy(model)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    grads = {}
    for name, net in (("quant", model), ("dequantized", same_weights), ("fp32", fp32)):
        torch.manual_seed(1)
        lorakit.add_adapter(net, config)
        net.train()
        net(input_ids=ids, labels=ids).loss.backward()
        grads[name] = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    assert len(grads["quant"]) == 2 * 3 * 2  # A and B of 3 modules in both layers, nothing else trainable
    for n, g in grads["quant"].items():
        assert g is not None and g.abs().sum() > 0, n  # layer 0's factors too: through every layer above
        tight = 1e-4 if mode in ("int4", "nf4") else (0.03 if mode == "bf16" else 0.1)
        assert rel_error(g, grads["dequantized"][n]) < tight, n
        assert rel_error(g, grads["fp32"][n]) < (0.05 if mode == "bf16" else 0.6), n


def test_lora_factors_and_heads_stay_fp32_and_only_they_train() -> None:
    model = make("bert")
    quantize_model(model, "int4")
    lorakit.add_adapter(model, LoraConfig(r=4, modules_to_save=["classifier"], task_type="SEQ_CLS"))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert not isinstance(model.classifier.original_module, QuantizedLayer)  # the head is trained whole
    assert not any(isinstance(m, QuantizedLayer) for n, m in model.named_modules() if "lora_" in n)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The same 20-step LoRA run on a tiny Llama (a model folder) and E2E-format data, int4 and fp32."""
    root = tmp_path_factory.mktemp("quant-train")
    write_e2e(root / "data", rows=48)
    write_tiny_llama(root / "tiny-llama")
    for mode in ("int4", "none"):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["train", "--task", "e2e", "--data", str(root / "data"), "--model", str(root / "tiny-llama"),
                         "--output", str(root / mode), "--quantize", mode, "--lora-rank", "8", "--lora-dropout", "0",
                         "--target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                         "--batch-size", "8", "--lr", "5e-2", "--warmup-steps", "1", "--log-every", "1",
                         "--max-steps", "20", "--samples", "0", "--save-every", "100"]) == 0
        (root / mode / "printed.txt").write_text(printed.getvalue())
    return root, root / "int4"


def _losses(run) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def _train(model: torch.nn.Module, ids: torch.Tensor, steps: int = 30) -> list[float]:
    torch.manual_seed(1)
    # the LM head too: the tiny model's random head gives near-uniform logits that the rest cannot sharpen
    lorakit.add_adapter(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"]))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("mode", MODES)
def test_training_on_a_quantized_base_lowers_the_loss_as_fp32_does(mode: str, ids: torch.Tensor) -> None:
    fp32 = _train(make("llama"), ids)
    model = make("llama")
    quantize_model(model, mode)
    quantized = _train(model, ids)
    assert quantized[-1] < 0.1 * quantized[0]  # fp32 and every mode: 4.58 -> 0.09 (measured)
    assert abs(quantized[-1] - fp32[-1]) < 0.25 * fp32[-1]


def test_lorakit_train_quantize_runs_like_fp32(tiny_run) -> None:
    """``lorakit train --quantize int4``: the setting reaches the model; on this tiny model (vocabulary of
    50k, width 32, so little to learn in 20 steps) int4's losses stay within 1% of fp32's."""
    root, out = tiny_run
    quantized, fp32 = _losses(out), _losses(root / "none")
    assert len(quantized) == 20 and quantized[-1] < quantized[0]
    assert all(abs(q - f) < 0.01 * f for q, f in zip(quantized, fp32, strict=True))
    assert json.loads((out / "run_config.json").read_text())["quantize"] == "int4"
    assert json.loads((out / "summary.json").read_text())["quantized_base"] == "int4"  # (auto's resolution too)
    assert json.loads((root / "none" / "summary.json").read_text())["quantized_base"] == "none"
    # the resolved base is printed before the first step (for auto, what the probe picked)
    assert re.search(r"base --quantize int4: \d+ linear layers in int4", (out / "printed.txt").read_text())
    assert "base --quantize" not in (root / "none" / "printed.txt").read_text()


def test_an_adapter_trained_quantized_loads_on_the_fp32_base_in_lorakit_and_peft(tiny_run) -> None:
    root, out = tiny_run
    ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(2))
    quantized, _ = load_model(str(root / "tiny-llama"), quantize="int4")
    lorakit.load_adapter(quantized, out / "adapter")
    fp32, _ = load_model(str(root / "tiny-llama"))
    base = copy.deepcopy(fp32)
    lorakit.load_adapter(fp32, out / "adapter")
    in_peft = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    torch.testing.assert_close(logits(in_peft, ids), logits(fp32, ids), rtol=0, atol=1e-5)
    assert rel_error(logits(quantized, ids), logits(fp32, ids)) < TOLERANCE["int4"]


def test_a_gpt2_adapter_trained_quantized_is_still_fan_in_fan_out_and_loads_in_peft(tmp_path, ids) -> None:
    fp32 = make("gpt2")
    model = copy.deepcopy(fp32)
    quantize_model(model, "bf16")
    assert isinstance(model.transformer.h[0].attn.c_attn, QuantConv1D)
    lorakit.add_adapter(model, LoraConfig(r=4, init_lora_weights=False))
    lorakit.save_adapter(model, tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    in_peft = peft.PeftModel.from_pretrained(fp32, tmp_path / "a").eval()
    assert rel_error(logits(in_peft, ids), logits(model, ids)) < TOLERANCE["bf16"]


# --- merging --------------------------------------------------------------------------------------------
def test_merging_into_a_quantized_base_is_refused_naming_the_layer(ids: torch.Tensor) -> None:
    model = make("llama")
    quantize_model(model, "int4")
    lorakit.add_adapter(model, LoraConfig(r=4, init_lora_weights=False))
    before = logits(model, ids)
    with pytest.raises(RuntimeError, match=r"cannot merge into model\.layers\.0\.self_attn\.q_proj: .*quantized "
                                           r"\(int4\)"):
        lorakit.merge_adapters(model)
    with pytest.raises(RuntimeError, match="quantized"):
        lorakit.merge_and_unload(model)
    assert lorakit.merged_adapters(model) == []
    torch.testing.assert_close(logits(model, ids), before, rtol=0, atol=0)


# --- per-row routing (serving) ----------------------------------------------------------------------------
def _llama_with_two_adapters(mode: str) -> torch.nn.Module:
    model = make("llama")
    quantize_model(model, mode)
    lorakit.add_adapter(model, LoraConfig(r=4, init_lora_weights=False), "qv4", activate=False)
    lorakit.add_adapter(model, LoraConfig(r=8, target_modules=["o_proj", "down_proj", "embed_tokens"],
                                          init_lora_weights=False), "mix8", activate=False)
    return model


def _alone(model: torch.nn.Module, ids: torch.Tensor, name: str | None) -> torch.Tensor:
    lorakit.set_active_adapters(model, [name] if name else [])
    out = logits(model, ids)
    lorakit.set_active_adapters(model, [])
    return out


@pytest.mark.parametrize("mode", ["bf16", "int4", "int8"])
def test_routed_rows_over_a_quantized_base_equal_each_adapter_alone(mode: str) -> None:
    """Exact for bf16 and int4, whose rows are computed independently. int8 quantizes each call's activations
    with one scale for the whole batch, so a row's output depends slightly on the other rows (with or
    without routing): there the rows agree within that rounding."""
    if mode == "int8" and not int8_kernel_available():
        pytest.skip("no fbgemm")
    model = _llama_with_two_adapters(mode)
    ids = torch.randint(3, VOCAB, (4, 10), generator=torch.Generator().manual_seed(3))
    rows = ["qv4", None, "mix8", "qv4"]
    with lorakit.route_rows(model, rows), torch.no_grad():
        mixed = model(input_ids=ids).logits
    for i, name in enumerate(rows):
        alone = _alone(model, ids[i:i + 1], name)
        if mode == "int8":
            assert rel_error(mixed[i:i + 1], alone) < 0.05
        else:
            torch.testing.assert_close(mixed[i:i + 1], alone, rtol=1e-5, atol=1e-5)


def test_adapters_routed_from_files_over_a_quantized_base(tmp_path) -> None:
    """What the server does: adapters attached from their files, no LoRA modules made by loading."""
    source = _llama_with_two_adapters("int4")
    for name in ("qv4", "mix8"):
        lorakit.save_adapter(source, tmp_path / name, name)
    model = make("llama")
    quantize_model(model, "int4")
    routing = lorakit.set_row_routing(model, lorakit.RowRouting())
    for name in ("qv4", "mix8"):
        config, tensors, _ = read_adapter(tmp_path / name)
        attach_routed(model, routing, name, plan_routed_adapter(model, config, tensors, source=name))
    ids = torch.randint(3, VOCAB, (3, 6), generator=torch.Generator().manual_seed(4))
    rows = ["mix8", "qv4", None]
    routing.set_rows(rows)
    with torch.no_grad():
        mixed = model(input_ids=ids).logits
    lorakit.set_row_routing(model, None)
    for i, name in enumerate(rows):
        torch.testing.assert_close(mixed[i:i + 1], _alone(source, ids[i:i + 1], name), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_adding_and_routing_adapters_never_dequantizes_the_base(arch: str, tmp_path, monkeypatch) -> None:
    """A quantized layer's ``weight`` is a dequantized copy of the whole matrix: adding a LoRA, saving it and
    attaching it to the row routing must read only shapes, dtype and device."""
    model = make(arch).to(torch.bfloat16)
    quantize_model(model, "int4")
    calls: list[str] = []
    original = QuantizedLayer.dequantize
    monkeypatch.setattr(QuantizedLayer, "dequantize", lambda self: calls.append(self.quant_mode) or original(self))
    targets = ["c_attn", "c_proj"] if arch == "gpt2" else ["q_proj", "v_proj", "down_proj"]
    lorakit.add_adapter(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets), "a")
    lorakit.save_adapter(model, tmp_path / "a", "a")
    routed = make(arch)
    quantize_model(routed, "int4")
    routing = lorakit.set_row_routing(routed, lorakit.RowRouting())
    config, tensors, _ = read_adapter(tmp_path / "a")
    attach_routed(routed, routing, "a", plan_routed_adapter(routed, config, tensors, source="a"))
    assert calls == []
    factors = [p for n, p in model.named_parameters() if "lora_" in n]
    assert factors and all(p.dtype == torch.bfloat16 for p in factors)  # the base's dtype, as unquantized


# --- auto ---------------------------------------------------------------------------------------------------
def test_auto_picks_from_the_probe_and_caches_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    calls = []

    def fake(ms):
        def measure(*args, **kwargs):
            calls.append(ms)
            return ms
        return measure

    # int8 measured fastest is not picked (auto keeps outputs close to fp32); bf16 20% faster than fp32 is
    monkeypatch.setattr(probe, "measure_modes", fake({"none": 10.0, "bf16": 8.0, "int8": 3.0}))
    assert choose_mode() == "bf16" and len(calls) == 1
    cache = json.loads((tmp_path / probe.CACHE_NAME).read_text())
    assert cache[probe.probe_key()]["mode"] == "bf16" and cache[probe.probe_key()]["ms"]["int8"] == 3.0
    monkeypatch.setattr(probe, "measure_modes", fake({"none": 10.0, "bf16": 9.5}))
    assert choose_mode() == "bf16" and len(calls) == 1  # from the cache: not measured again
    assert choose_mode(refresh=True) == "none" and len(calls) == 2  # within the 10% margin: fp32
    model = make("llama")
    assert quantize_model(model, "auto").mode == "none" and quant_mode(model) is None
    monkeypatch.setattr(probe, "probe_key", lambda *a, **k: "another CPU")  # another machine measures for itself
    monkeypatch.setattr(probe, "measure_modes", fake({"none": 10.0, "bf16": 20.0}))
    assert choose_mode() == "none" and len(calls) == 3


def test_auto_measures_where_the_model_will_run(tmp_path, monkeypatch) -> None:
    """With a GPU, auto is decided on the GPU (the default device), keyed by its name; --device cpu still
    measures the CPU; an int8 base stays on the CPU unless a device is named."""
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    seen = []

    def measure(*args, device="cpu", **kwargs):
        seen.append(torch.device(device))
        return {"none": 1.0, "bf16": 2.0} if torch.device(device).type == "cuda" else {"none": 10.0, "bf16": 5.0}

    monkeypatch.setattr(probe, "measure_modes", measure)
    assert choose_mode() == "none" and seen == [torch.device("cuda", 0)]
    assert choose_mode(device="cpu") == "bf16" and seen[-1] == torch.device("cpu")
    cache = json.loads((tmp_path / probe.CACHE_NAME).read_text())
    assert cache["Fake GPU | torch " + torch.__version__]["mode"] == "none"
    assert cache[probe.probe_key("cpu")]["mode"] == "bf16"
    assert quantize_model(make("llama"), "auto", device="cpu").mode == "bf16" and len(seen) == 2  # cached
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "other"))
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun: this process's GPU
    assert choose_mode() == "none" and seen[-1] == torch.device("cuda", 1)
    assert resolve_device(None, quantize="int8") == torch.device("cpu")
    assert resolve_device("cpu", quantize="bf16") == torch.device("cpu")


def test_processes_started_together_measure_once_and_agree(tmp_path, monkeypatch) -> None:
    """torchrun's ranks resolve auto at the same moment: the first measures, the others read its answer
    (two measurements could pick different modes, and DDP needs the same modules in every rank)."""
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path))
    answers = iter([{"none": 10.0, "bf16": 5.0}, {"none": 5.0, "bf16": 10.0}])

    def slow_measure(*args, **kwargs):
        time.sleep(0.3)
        return next(answers)

    monkeypatch.setattr(probe, "measure_modes", slow_measure)
    with ThreadPoolExecutor(2) as pool:
        modes = list(pool.map(lambda _: choose_mode(device="cpu"), range(2)))
    assert modes == ["bf16", "bf16"]
    assert next(answers) == {"none": 5.0, "bf16": 10.0}  # measured once: the second answer is still unused


def test_a_gpu_that_is_not_there_and_int8_training_on_a_gpu_are_refused(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device cuda: this PyTorch .* sees no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    run = tmp_path / "run"
    assert main(["train", "--model", str(tmp_path / "no-model"), "--quantize", "int8", "--output", str(run)]) == 2
    assert "quantize int8 is a CPU kernel (PyTorch's fbgemm) and training runs on this machine's GPU" \
        in capsys.readouterr().err
    assert not run.exists()


def test_lorakit_train_prints_what_auto_resolved_to(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(probe, "measure_modes", lambda *a, **k: {"none": 10.0, "bf16": 8.0})  # bf16 measured faster
    write_e2e(tmp_path / "data", rows=16)
    write_tiny_llama(tmp_path / "tiny-llama")
    assert main(["train", "--task", "e2e", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "tiny-llama"),
                 "--output", str(tmp_path / "run"), "--quantize", "auto", "--batch-size", "8", "--max-steps", "2",
                 "--samples", "0", "--save-every", "100"]) == 0
    # before the first step, not only in summary.json at the end
    assert re.search(r"trainable [\d,]+ / [\d,]+; base --quantize auto: \d+ linear layers in bf16",
                     capsys.readouterr().out)


def test_the_real_probe_measures_the_modes_it_can_run() -> None:
    ms = probe.measure_modes(rounds=1, calls=1)
    assert {"none", "bf16"} <= set(ms) and all(v > 0 for v in ms.values())


# --- settings, flags, loading ---------------------------------------------------------------------------
def test_quantize_setting_and_flags(tmp_path) -> None:
    assert TrainConfig(quantize="int4").quantize == "int4"
    with pytest.raises(ConfigError, match="quantize: expected one of 'none', 'int8'"):
        TrainConfig(quantize="int2")
    with pytest.raises(ConfigError, match="quantize: a quantized base is frozen"):
        TrainConfig(quantize="int8", full_finetune=True)
    # auto (the main job's config) means "where it pays off": a full fine-tune of that config loads fp32
    assert TrainConfig(quantize="auto", full_finetune=True).base_quantize == "none"
    assert TrainConfig(quantize="auto").base_quantize == "auto"
    parser = build_parser()
    for command in (["generate", "--model", "m", "--output", "o"], ["predict", "--model", "m"],
                    ["serve", "--model", "m", "--adapters", "a"], ["train"]):
        assert parser.parse_args([*command, "--quantize", "nf4"]).quantize == "nf4"
    with pytest.raises(ValueError, match="quantize must be one of"):
        load_model(str(tmp_path / "not-even-read"), quantize="int3")


@pytest.mark.skipif(not int8_kernel_available(), reason="no fbgemm")
def test_smollm2_int4_is_exact_and_int8_quantizes_the_tied_head_apart() -> None:
    """The packaged SmolLM2 (GGUF Q4_1 body): int4 reproduces it, its head left fp32. int8 quantizes the tied
    LM head into its own copy; the input embedding keeps its fp32 table, so token lookups do not change."""
    try:
        fp32, tokenizer = load_model("smollm2-135m")
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(f"SmolLM2 not installed: {err}")
    batch = tokenizer(["name[The Eagle], food[French]\n"], return_tensors="pt")
    expected = logits(fp32, batch["input_ids"])
    int4 = copy.deepcopy(fp32)
    quantize_model(int4, "int4")
    assert len(list(quantized_layers(int4))) == 210 and not isinstance(int4.lm_head, QuantizedLayer)
    assert rel_error(logits(int4, batch["input_ids"]), expected) < 1e-5
    embedding = fp32.model.embed_tokens.weight.detach().clone()
    quantize_model(fp32, "int8")
    assert isinstance(fp32.lm_head, QuantLinear) and fp32.model.embed_tokens.weight.dtype == torch.float32
    torch.testing.assert_close(fp32.model.embed_tokens.weight, embedding, rtol=0, atol=0)


# ----------------------------------------------------------------------------------- the disk cache
def _count_quantizations(monkeypatch) -> list[str]:
    """Every weight quantized from full precision (``QuantWeight.__init__``), not read from the cache."""
    calls: list[str] = []
    original = QuantWeight.__init__

    def counted(self, weight):
        calls.append(self.mode)
        original(self, weight)

    monkeypatch.setattr(QuantWeight, "__init__", counted)
    return calls


@pytest.mark.parametrize("mode", MODES)
def test_a_cached_quantized_model_equals_a_freshly_quantized_one(mode, tmp_path, monkeypatch, ids) -> None:
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    folder = write_tiny_llama(tmp_path / "model")
    calls = _count_quantizations(monkeypatch)
    fresh, _ = load_model(str(folder), quantize=mode)
    built = len(calls)
    assert built == len(list(quantized_layers(fresh))) > 0
    entries = list((tmp_path / "home" / "quantized").iterdir())
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {cache.MARKER, cache.WEIGHTS}
    cached, _ = load_model(str(folder), quantize=mode)
    assert len(calls) == built  # nothing quantized again: every layer came from the cache
    uncached, _ = load_model(str(folder), quantize=mode, quant_cache=False)
    assert len(calls) == 2 * built
    torch.testing.assert_close(logits(cached, ids), logits(fresh, ids), rtol=0, atol=0)
    torch.testing.assert_close(logits(uncached, ids), logits(fresh, ids), rtol=0, atol=0)
    for (path, a), (_, b) in zip(quantized_layers(fresh), quantized_layers(cached), strict=True):
        assert a.quant_mode == b.quant_mode == mode and a.qweight.nbytes == b.qweight.nbytes, path


def test_a_changed_model_or_a_broken_cache_entry_is_quantized_again(tmp_path, monkeypatch, ids) -> None:
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    folder = write_tiny_llama(tmp_path / "model")
    calls = _count_quantizations(monkeypatch)
    load_model(str(folder), quantize="bf16")
    (old,) = (tmp_path / "home" / "quantized").iterdir()
    write_tiny_llama(folder, seed=1)  # new weights in the same folder: the old entry must not be used
    before = len(calls)
    changed, _ = load_model(str(folder), quantize="bf16")
    assert len(calls) > before and not old.exists()  # requantized; the outdated entry of this folder removed
    expected = logits(load_model(str(folder), quantize="bf16", quant_cache=False)[0], ids)
    torch.testing.assert_close(logits(changed, ids), expected, rtol=0, atol=0)

    (entry,) = (tmp_path / "home" / "quantized").iterdir()
    (entry / cache.WEIGHTS).write_bytes((entry / cache.WEIGHTS).read_bytes()[:100])  # a truncated file
    before = len(calls)
    with pytest.warns(UserWarning, match=r"quantized cache .* is unreadable .*quantizing again"):
        repaired, _ = load_model(str(folder), quantize="bf16")
    assert len(calls) > before
    torch.testing.assert_close(logits(repaired, ids), expected, rtol=0, atol=0)
    assert (entry / cache.WEIGHTS).stat().st_size > 100  # written whole again


def test_an_unwritable_cache_is_skipped_with_a_warning(tmp_path, monkeypatch, ids) -> None:
    home = tmp_path / "home"
    home.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LORAKIT_HOME", str(home))
    folder = write_tiny_llama(tmp_path / "model")
    with pytest.warns(UserWarning, match="could not write the quantized cache"):
        model, _ = load_model(str(folder), quantize="int4")
    expected = logits(load_model(str(folder), quantize="int4", quant_cache=False)[0], ids)
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=0)


def test_cache_entries_of_vanished_folders_are_removed(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORAKIT_HOME", str(tmp_path / "home"))
    gone = write_tiny_llama(tmp_path / "gone")
    load_model(str(gone), quantize="bf16")
    (stale,) = (tmp_path / "home" / "quantized").iterdir()
    shutil.rmtree(gone)
    load_model(str(write_tiny_llama(tmp_path / "kept")), quantize="bf16")
    (entry,) = (tmp_path / "home" / "quantized").iterdir()
    assert entry != stale and json.loads((entry / cache.MARKER).read_text())["source"].endswith("kept")


def test_a_quantized_run_is_reloaded_on_the_same_quantized_base(tiny_run, capsys, monkeypatch) -> None:
    """What ``lorakit train --quantize`` prints after training: the saved adapter on a fresh base quantized
    the same way (read from the disk cache) gives the trained model's logits exactly, and is not merged."""
    from lorakit.samples import reload_and_merge

    root, out = tiny_run
    monkeypatch.setenv("LORAKIT_HOME", str(root / "home"))
    trained, tokenizer = load_model(str(root / "tiny-llama"), quantize="int4")
    lorakit.load_adapter(trained, out / "adapter")
    reloaded = reload_and_merge(trained, tokenizer, str(root / "tiny-llama"), out / "adapter", "default",
                                "name : Alimentum | area : riverside\n")
    assert "(int4): max |logit diff| vs the trained model 0.00e+00; not merged" in capsys.readouterr().out
    assert len(list((root / "home" / "quantized").glob(f"*/{cache.WEIGHTS}"))) == 1  # one entry, read twice
    assert quant_mode(reloaded) == "int4" and len(list(lorakit.lora_layers(reloaded))) > 0
