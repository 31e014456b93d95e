"""Each LoRA layer type against the formula it implements."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lorakit.lora import Embedding, FusedLinear, Linear
from lorakit.lora.layers import lora_scaling


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _randomize_b(layer, name="a") -> None:
    with torch.no_grad():
        for p in layer.adapter_parameters(name):
            if p.abs().sum() == 0:
                p.normal_(std=0.5)


def test_fresh_adapter_changes_nothing_and_a_is_kaiming_b_zero():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = Linear(base)
    layer.add_adapter("a", r=4, alpha=8)
    layer.set_active(["a"])
    x = _x(5, 16)
    assert torch.equal(layer(x), base(x))
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    assert torch.count_nonzero(b) == 0
    bound = 1 / math.sqrt(16)  # kaiming_uniform(a=sqrt(5)) on fan_in=16
    assert a.abs().max() <= bound and a.abs().max() > bound / 2


@pytest.mark.parametrize("use_rslora", [False, True])
def test_linear_matches_formula(use_rslora):
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = Linear(base)
    layer.add_adapter("a", r=4, alpha=8, use_rslora=use_rslora)
    layer.set_active(["a"])
    _randomize_b(layer)
    scale = 8 / 2 if use_rslora else 8 / 4
    assert layer.scaling["a"] == lora_scaling(4, 8, use_rslora) == scale
    x = _x(2, 3, 16)
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    expected = base(x) + x @ a.T @ b.T * scale
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)


def test_conv1d_fan_in_fan_out_equals_linear_with_same_weights():
    torch.manual_seed(0)
    conv = Conv1D(12, 16)  # nf=12 outputs, nx=16 inputs, weight stored (16, 12)
    linear = nn.Linear(16, 12)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    lc, ll = Linear(conv), Linear(linear)
    assert lc.fan_in_fan_out and not ll.fan_in_fan_out
    for layer in (lc, ll):
        layer.add_adapter("a", r=2, alpha=4)
        layer.set_active(["a"])
    with torch.no_grad():
        lc.lora_A["a"].weight.copy_(ll.lora_A["a"].weight)
        ll.lora_B["a"].weight.normal_()
        lc.lora_B["a"].weight.copy_(ll.lora_B["a"].weight)
    x = _x(4, 16)
    torch.testing.assert_close(lc(x), ll(x), rtol=0, atol=1e-5)
    assert lc.delta_weight("a").shape == conv.weight.shape
    lc.merge(["a"])
    torch.testing.assert_close(conv(x), ll(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("base_cls", ["linear", "conv1d"])
def test_fused_qkv_adapts_only_enabled_slices(base_cls):
    torch.manual_seed(0)
    d = 8
    base = nn.Linear(d, 3 * d) if base_cls == "linear" else Conv1D(3 * d, d)
    layer = FusedLinear(base, [True, False, True])
    layer.add_adapter("a", r=2, alpha=4)
    layer.set_active(["a"])
    _randomize_b(layer)
    x = _x(3, d)
    delta = layer(x) - base(x)
    q, k, v = delta.split(d, dim=-1)
    assert torch.count_nonzero(k) == 0
    assert torch.count_nonzero(q) > 0 and torch.count_nonzero(v) > 0
    # loralib's MergedLinear: slice i gets B_i A_i x * scaling
    a_q, a_v = layer.lora_A["a"].weight.split(2)
    b_q, b_v = layer.lora_B["a"].weight.split(d)
    torch.testing.assert_close(q, x @ a_q.T @ b_q.T * 2.0, rtol=0, atol=1e-6)
    torch.testing.assert_close(v, x @ a_v.T @ b_v.T * 2.0, rtol=0, atol=1e-6)
    # the full-rank form used for PEFT files is the same update, and inverts exactly
    a_full, b_full = layer.to_full_rank_lora("a")
    assert b_full.shape == (3 * d, 4)
    torch.testing.assert_close(delta, x @ a_full.T @ b_full.T * 2.0, rtol=0, atol=1e-6)
    assert torch.equal(layer.from_full_rank_lora(b_full, 2), layer.lora_B["a"].weight)
    b_full[d, 0] = 1.0  # a k-row entry: not a q/v slice adapter any more
    with pytest.raises(ValueError, match="outside the enabled"):
        layer.from_full_rank_lora(b_full, 2)


def test_fused_rejects_bad_masks():
    with pytest.raises(ValueError):
        FusedLinear(nn.Linear(4, 12), [False, False, False])
    with pytest.raises(ValueError, match="equal slices"):
        FusedLinear(nn.Linear(4, 10), [True, False, True])


def test_embedding_matches_formula_and_merges():
    torch.manual_seed(0)
    base = nn.Embedding(20, 6, padding_idx=0)
    layer = Embedding(base)
    layer.add_adapter("a", r=3, alpha=3)
    layer.set_active(["a"])
    ids = torch.tensor([[0, 5, 7], [19, 2, 2]])
    assert torch.equal(layer(ids), base(ids))  # A starts at zero
    with torch.no_grad():
        layer.lora_embedding_A["a"].normal_()
    a, b = layer.lora_embedding_A["a"], layer.lora_embedding_B["a"]
    expected = base(ids) + a.T[ids] @ b.T * 1.0
    out = layer(ids)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    layer.merge(["a"])
    torch.testing.assert_close(layer(ids), out, rtol=0, atol=1e-5)


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    layer = Linear(nn.Linear(32, 32))
    layer.add_adapter("a", r=4, alpha=4, dropout=0.5)
    layer.set_active(["a"])
    _randomize_b(layer)
    x = _x(8, 32)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_eval_never_merges():
    """loralib merges inside ``eval()``; here weights only change when merge() is called."""
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    layer = Linear(base)
    layer.add_adapter("a", r=2, alpha=2)
    layer.set_active(["a"])
    _randomize_b(layer)
    before = base.weight.detach().clone()
    layer.eval()
    layer.train()
    layer.eval()
    assert torch.equal(base.weight, before) and layer.merged_adapters == []


def test_wrapped_module_attributes_stay_reachable():
    conv = Conv1D(12, 4)
    layer = Linear(conv)
    assert layer.nf == 12 and layer.weight is conv.weight
