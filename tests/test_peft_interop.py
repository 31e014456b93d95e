"""Adapters cross between lorakit and the real ``peft`` package in both directions with equal outputs.

Every adapter here has non-zero B (and a changed head), so an adapter that failed to load would show."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from conftest import logits, make
from safetensors import safe_open

import lorakit
from lorakit import LoraConfig
from lorakit.lora import FusedLinear, Linear

ATOL = 1e-5

CASES = {
    # arch: (lorakit config, PEFT config for the other direction)
    "gpt2": (LoraConfig(r=4, lora_alpha=8, init_lora_weights=False),  # q,v slices of c_attn (default)
             dict(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                  fan_in_fan_out=True)),
    "roberta": (LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, modules_to_save=["classifier"],
                           task_type="SEQ_CLS"),
                dict(task_type="SEQ_CLS", r=4, lora_alpha=16, target_modules=["query", "value"],
                     modules_to_save=["classifier"])),
    "llama": (LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj", "o_proj"],
                         use_rslora=True),
              dict(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                   use_rslora=True)),
}


def _randomize(params, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("arch", list(CASES))
def test_lorakit_adapter_loads_in_peft(arch, ids, tmp_path):
    base = make(arch)
    ours = copy.deepcopy(base)
    lorakit.add_adapter(ours, CASES[arch][0])
    _randomize([p for n, p in ours.named_parameters() if p.requires_grad], seed=3)  # B and head non-zero
    expected = logits(ours, ids)
    assert (expected - logits(base, ids)).abs().max() > 1e-2
    lorakit.save_adapter(ours, tmp_path / "adapter")

    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(peft_model, ids), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("arch", list(CASES))
def test_peft_adapter_loads_in_lorakit(arch, ids, tmp_path):
    base = make(arch)
    peft_model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**CASES[arch][1]))
    _randomize([p for n, p in peft_model.named_parameters() if p.requires_grad], seed=4)
    peft_model.eval()
    expected = logits(peft_model, ids)
    assert (expected - logits(base, ids)).abs().max() > 1e-2
    peft_model.save_pretrained(tmp_path / "adapter")

    ours = copy.deepcopy(base)
    lorakit.load_adapter(ours, tmp_path / "adapter")
    torch.testing.assert_close(logits(ours, ids), expected, rtol=0, atol=ATOL)


def test_gpt2_qv_slice_adapter_is_saved_as_equivalent_rank_2r_lora(tmp_path, ids):
    model = make("gpt2")
    lorakit.add_adapter(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    lorakit.save_adapter(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["fan_in_fan_out"] is True
    assert config["rank_pattern"] == {rf"transformer\.h\.{i}\.attn\.c_attn": 8 for i in range(2)}
    assert config["alpha_pattern"] == {rf"transformer\.h\.{i}\.attn\.c_attn": 16.0 for i in range(2)}
    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), "pt") as f:
        b = f.get_tensor("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight")
    assert b.shape == (96, 8)
    assert torch.count_nonzero(b[32:64]) == 0  # the k rows stay untouched
    # lorakit reads its own file back as the q,v slice adapter, not as a plain rank-8 LoRA
    again = make("gpt2")
    lorakit.load_adapter(again, tmp_path / "a")
    layer = again.transformer.h[0].attn.c_attn
    assert isinstance(layer, FusedLinear) and layer.r["default"] == 4
    torch.testing.assert_close(logits(again, ids), logits(model, ids), rtol=0, atol=ATOL)


def test_peft_gpt2_c_attn_adapter_loads_as_plain_lora(tmp_path, ids):
    """PEFT adapts all of c_attn; with no lorakit header the file loads as a plain LoRA, exactly."""
    peft_model = peft.get_peft_model(make("gpt2"), peft.LoraConfig(**CASES["gpt2"][1]))
    _randomize([p for p in peft_model.parameters() if p.requires_grad], seed=6)
    peft_model.save_pretrained(tmp_path / "p")
    ours = make("gpt2")
    lorakit.load_adapter(ours, tmp_path / "p")
    assert type(ours.transformer.h[0].attn.c_attn) is Linear
    torch.testing.assert_close(logits(ours, ids), logits(peft_model.eval(), ids), rtol=0, atol=ATOL)


def test_embedding_and_bias_interop(ids, tmp_path):
    base = make("gpt2")
    ours = copy.deepcopy(base)
    lorakit.add_adapter(ours, LoraConfig(r=2, target_modules=["c_attn", "wte"], bias="lora_only",
                                         init_lora_weights=False))
    _randomize([p for p in ours.parameters() if p.requires_grad], seed=5)
    expected = logits(ours, ids)
    lorakit.save_adapter(ours, tmp_path / "e")
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "e").eval()
    torch.testing.assert_close(logits(peft_model, ids), expected, rtol=0, atol=ATOL)
    peft_model.save_pretrained(tmp_path / "back")
    again = copy.deepcopy(base)
    lorakit.load_adapter(again, tmp_path / "back")
    torch.testing.assert_close(logits(again, ids), expected, rtol=0, atol=ATOL)
