"""Injection, named adapters, merging and rollback on small random models of each architecture."""

from __future__ import annotations

import pytest
import torch
from conftest import logits, make
from torch import nn

import lorakit
from lorakit import LoraConfig
from lorakit.lora import FusedLinear, Linear, ModulesToSave


def _structure(model: nn.Module) -> list[tuple[str, str]]:
    return [(n, type(m).__name__) for n, m in model.named_modules()]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _grads(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def _perturb(model: nn.Module, name: str, seed: int = 0) -> None:
    """Give adapter ``name`` non-zero weights everywhere so tests can see it act."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lorakit.lora_layers(model):
            if name in layer.adapter_names:
                for p in layer.adapter_parameters(name):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize(("arch", "paths", "kind"), [
    ("gpt2", ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"], FusedLinear),
    ("roberta", ["roberta.encoder.layer.0.attention.self.query", "roberta.encoder.layer.1.attention.self.value"],
     Linear),
    ("bert", ["bert.encoder.layer.0.attention.self.query"], Linear),
    ("llama", ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"], Linear),
])
def test_architecture_defaults(arch, paths, kind):
    model = make(arch)
    lorakit.add_adapter(model, LoraConfig(r=4))
    for path in paths:
        assert type(model.get_submodule(path)) is kind
    if arch == "gpt2":
        assert model.transformer.h[0].attn.c_attn.enable_lora == [True, False, True]
    targets = {p.rsplit(".", 1)[-1] for p, _ in lorakit.lora_layers(model)}
    assert targets == {"gpt2": {"c_attn"}, "llama": {"q_proj", "v_proj"}}.get(arch, {"query", "value"})


def test_adapter_added_to_eval_model_has_no_active_dropout(ids):
    model = make("llama")  # in eval mode
    lorakit.add_adapter(model, LoraConfig(r=4, lora_dropout=0.5, init_lora_weights=False))
    assert not any(m.training for m in model.modules())
    torch.testing.assert_close(logits(model, ids), logits(model, ids), rtol=0, atol=0)
    model.train()
    assert all(m.training for m in model.modules())


def test_unknown_architecture_needs_targets():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="target_modules"):
        lorakit.add_adapter(model, LoraConfig())
    lorakit.add_adapter(model, LoraConfig(target_modules=["0"]))
    assert isinstance(model[0], Linear)


def test_targets_by_regex_and_exclusion():
    model = make("llama")
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=r".*\.(q_proj|o_proj)", exclude_modules=["o_proj"]))
    names = [p for p, _ in lorakit.lora_layers(model)]
    assert names == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def test_only_adapter_and_head_train_and_counts_match():
    model = make("roberta")
    total_before = sum(p.numel() for p in model.parameters())
    lorakit.add_adapter(model, LoraConfig(r=4, modules_to_save=["classifier"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = sum(p.numel() for p in model.classifier.original_module.parameters())
    lora = 2 * 2 * (4 * 32 + 32 * 4)  # 2 layers x (query, value) x (A + B)
    report = lorakit.parameter_report(model)
    assert report.trainable == lora + head
    assert report.total == total_before + lora + head  # the head copy is new parameters
    assert all(("lora_" in n) or (".modules_to_save.default." in n) for n in trainable)


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_bias_modes(bias):
    model = make("gpt2")
    lorakit.add_adapter(model, LoraConfig(r=2, bias=bias))
    trainable_biases = sorted(n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias"))
    if bias == "none":
        assert trainable_biases == []
    elif bias == "lora_only":
        assert trainable_biases == [f"transformer.h.{i}.attn.c_attn.base_layer.bias" for i in range(2)]
    else:
        assert len(trainable_biases) == sum(1 for n, _ in make("gpt2").named_parameters() if n.endswith("bias"))
    saved = lorakit.adapter_state_dict(model)
    assert sorted(k for k in saved if k.endswith(".bias")) == [f"base_model.model.{n}" for n in trainable_biases]


def test_backward_touches_only_the_adapter(ids):
    model = make("llama")
    lorakit.add_adapter(model, LoraConfig(r=4))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert any("lora_A" in n for n in with_grad) and any("lora_B" in n for n in with_grad)


def test_named_adapters_activate_deactivate_disable_delete(ids):
    model = make("llama")
    structure, state = _structure(model), _state(model)
    base = logits(model, ids)
    lorakit.add_adapter(model, LoraConfig(r=4), name="a")
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=["q_proj", "k_proj"]), name="b", activate=False)
    _perturb(model, "a", seed=1)
    _perturb(model, "b", seed=2)
    assert lorakit.adapter_names(model) == ["a", "b"] and lorakit.active_adapters(model) == ["a"]
    out_a = logits(model, ids)
    lorakit.set_active_adapters(model, "b")
    out_b = logits(model, ids)
    assert (out_a - base).abs().max() > 1e-3 and (out_b - base).abs().max() > 1e-3
    assert (out_a - out_b).abs().max() > 1e-3
    lorakit.activate_adapter(model, "a")  # both act: q_proj gets the sum of the two updates
    both = logits(model, ids)
    assert lorakit.active_adapters(model) == ["b", "a"]
    assert (both - out_a).abs().max() > 1e-3 and (both - out_b).abs().max() > 1e-3
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(logits(model, ids), base, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model, ids), both, rtol=0, atol=1e-6)
    lorakit.deactivate_adapter(model, "b")
    torch.testing.assert_close(logits(model, ids), out_a, rtol=0, atol=1e-6)
    lorakit.set_active_adapters(model, [])
    torch.testing.assert_close(logits(model, ids), base, rtol=0, atol=1e-6)
    lorakit.delete_adapter(model, "a")
    assert lorakit.adapter_names(model) == ["b"]
    assert not any("a" in layer.adapter_names for _, layer in lorakit.lora_layers(model))
    lorakit.delete_adapter(model, "b")
    assert _structure(model) == structure
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(KeyError, match="no adapter named 'a'"):
        lorakit.set_active_adapters(model, "a")


@pytest.mark.parametrize("arch", ["gpt2", "roberta", "llama", "bert"])
def test_merge_unmerge_exact(arch, ids):
    model = make(arch)
    if arch == "gpt2":  # LoRA on wte must not merge into a weight that is also lm_head (see below)
        model.config.tie_word_embeddings = False
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    base_weights = lorakit.base_state_dict(model)
    targets = ["c_attn", "wte"] if arch == "gpt2" else None  # the GPT-2 case covers Conv1D, fused, embedding
    lorakit.add_adapter(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False,
                                          fused_modules={"c_attn": [True, False, True]} if targets else {}))
    _perturb(model, "default")
    unmerged = logits(model, ids)
    lorakit.merge_adapters(model)
    assert lorakit.merged_adapters(model) == ["default"]
    merged = logits(model, ids)
    assert (merged - unmerged).abs().max().item() < 1e-5
    assert lorakit.max_weight_change(model, base_weights) > 1e-3
    with lorakit.disable_adapters(model):  # a merged adapter is taken out, then put back
        base_out = logits(model, ids)
    assert (logits(model, ids) - merged).abs().max().item() < 1e-6
    lorakit.unmerge_adapters(model)
    assert lorakit.merged_adapters(model) == []
    assert lorakit.max_weight_change(model, base_weights) < 1e-6
    assert (logits(model, ids) - unmerged).abs().max().item() < 1e-5
    lorakit.set_active_adapters(model, [])
    torch.testing.assert_close(logits(model, ids), base_out, rtol=0, atol=1e-6)


def test_merge_into_tied_embedding_is_refused(ids):
    model = make("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=["c_attn", "wte"], init_lora_weights=False))
    before = lorakit.base_state_dict(model)
    with pytest.raises(RuntimeError, match="shared with"):
        lorakit.merge_adapters(model)
    assert lorakit.merged_adapters(model) == []
    after = lorakit.base_state_dict(model)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_deactivating_a_merged_adapter_is_refused(ids):
    model = make("llama")
    lorakit.add_adapter(model, LoraConfig(r=4))
    lorakit.merge_adapters(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        lorakit.set_active_adapters(model, [])


def test_merge_and_unload_gives_plain_model_with_same_outputs(ids):
    model = make("roberta")
    plain_types = _structure(make("roberta"))
    lorakit.add_adapter(model, LoraConfig(r=4, modules_to_save=["classifier"]))
    _perturb(model, "default")
    with torch.no_grad():
        model.classifier.modules_to_save["default"].out_proj.weight.add_(0.5)
    expected = logits(model, ids)
    lorakit.merge_and_unload(model)
    assert _structure(model) == plain_types
    assert lorakit.adapter_names(model) == []
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=1e-5)


def test_unload_restores_base(ids):
    model = make("gpt2")
    base = logits(model, ids)
    structure = _structure(model)
    lorakit.add_adapter(model, LoraConfig(r=4, init_lora_weights=False))
    lorakit.merge_adapters(model)
    lorakit.unload(model)
    assert _structure(model) == structure
    torch.testing.assert_close(logits(model, ids), base, rtol=0, atol=1e-5)


def test_modules_to_save_copy_per_adapter(ids):
    model = make("roberta")
    base = logits(model, ids)
    lorakit.add_adapter(model, LoraConfig(r=2, modules_to_save=["classifier"]), name="t1")
    lorakit.add_adapter(model, LoraConfig(r=2, modules_to_save=["classifier"]), name="t2")
    assert isinstance(model.classifier, ModulesToSave)
    with torch.no_grad():
        model.classifier.modules_to_save["t2"].out_proj.bias.add_(1.0)
    assert lorakit.active_adapters(model) == ["t2"]
    torch.testing.assert_close(logits(model, ids), base + 1.0, rtol=0, atol=1e-5)
    lorakit.set_active_adapters(model, "t1")
    torch.testing.assert_close(logits(model, ids), base, rtol=0, atol=1e-6)
    lorakit.set_active_adapters(model, ["t1", "t2"])
    with pytest.raises(RuntimeError, match="activate only one"):
        logits(model, ids)


def test_failed_add_leaves_model_unchanged():
    model = make("gpt2")
    lorakit.add_adapter(model, LoraConfig(r=2), name="first")
    structure, state, grads = _structure(model), _state(model), _grads(model)
    bad = LoraConfig(r=2, target_modules=["c_attn", "ln_1"])  # LayerNorm cannot take LoRA
    with pytest.raises(TypeError, match="ln_1"):
        lorakit.add_adapter(model, bad, name="second")
    assert _structure(model) == structure and _grads(model) == grads
    assert lorakit.adapter_names(model) == ["first"] and lorakit.active_adapters(model) == ["first"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="matched no module"):
        lorakit.add_adapter(model, LoraConfig(target_modules=["nope"]), name="third")
    with pytest.raises(ValueError, match="already has an adapter"):
        lorakit.add_adapter(model, LoraConfig(), name="first")
    with pytest.raises(ValueError, match="same slices"):
        lorakit.add_adapter(model, LoraConfig(target_modules=["c_attn"]), name="plain")
    assert _structure(model) == structure


def test_merge_and_unload_refuses_two_heads_and_changes_nothing(ids):
    model = make("roberta")
    lorakit.add_adapter(model, LoraConfig(r=2, modules_to_save=["classifier"]), name="t1")
    lorakit.add_adapter(model, LoraConfig(r=2, modules_to_save=["classifier"]), name="t2")
    lorakit.set_active_adapters(model, ["t1", "t2"])
    structure, state = _structure(model), _state(model)
    with pytest.raises(RuntimeError, match="activate only one"):
        lorakit.merge_and_unload(model)
    assert _structure(model) == structure and lorakit.merged_adapters(model) == []
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_disable_adapters_nests(ids):
    model = make("llama")
    base = logits(model, ids)
    lorakit.add_adapter(model, LoraConfig(r=4, init_lora_weights=False))
    _perturb(model, "default")
    with lorakit.disable_adapters(model):
        with lorakit.disable_adapters(model):
            pass
        torch.testing.assert_close(logits(model, ids), base, rtol=0, atol=1e-6)  # still disabled
    assert (logits(model, ids) - base).abs().max() > 1e-3


def test_inactive_adapter_is_not_trainable():
    model = make("roberta")
    lorakit.add_adapter(model, LoraConfig(r=2, modules_to_save=["classifier"]), name="a")
    lorakit.add_adapter(model, LoraConfig(r=2, modules_to_save=["classifier"]), name="b", activate=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any(".b." in n or n.endswith(".b") for n in trainable)
    lorakit.set_trainable(model, "b")
    assert all(".b." in n or n.endswith(".b") for n, p in model.named_parameters() if p.requires_grad)
