"""Per-row routing: every row of a mixed batch gets exactly what its adapter (or the base) gives alone."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, make

import lorakit
from lorakit import LoraConfig


def _alone(model: torch.nn.Module, ids: torch.Tensor, name: str | None, **kw) -> torch.Tensor:
    """The row run by itself through the ordinary (active adapter) path."""
    lorakit.set_active_adapters(model, [name] if name else [])
    with torch.no_grad():
        out = model(input_ids=ids, **kw).logits
    lorakit.set_active_adapters(model, [])
    return out


def _llama_with_adapters() -> torch.nn.Module:
    model = make("llama")
    # different ranks, different target modules, one on the embedding too
    lorakit.add_adapter(model, LoraConfig(r=4, init_lora_weights=False), "qv4", activate=False)
    lorakit.add_adapter(model, LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                "up_proj", "down_proj"], init_lora_weights=False),
                        "all8", activate=False)
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=["embed_tokens", "o_proj"], init_lora_weights=False),
                        "emb2", activate=False)
    return model


def test_mixed_batch_rows_equal_each_row_alone_llama() -> None:
    model = _llama_with_adapters()
    ids = torch.randint(3, VOCAB, (6, 10), generator=torch.Generator().manual_seed(3))
    rows = ["qv4", None, "all8", "emb2", "qv4", "all8"]
    with lorakit.route_rows(model, rows), torch.no_grad():
        mixed = model(input_ids=ids).logits
    base = _alone(model, ids, None)
    for i, name in enumerate(rows):
        alone = _alone(model, ids[i:i + 1], name)
        torch.testing.assert_close(mixed[i:i + 1], alone, rtol=1e-5, atol=1e-5)
        if name is not None:  # the adapter really acts, so equality above is not trivial
            assert (alone - base[i:i + 1]).abs().max() > 1e-3


def test_routing_is_removed_after_the_block_and_active_adapters_act_again() -> None:
    model = _llama_with_adapters()
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(4))
    lorakit.set_active_adapters(model, ["qv4"])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    with lorakit.route_rows(model, [None, None]), torch.no_grad():
        routed = model(input_ids=ids).logits
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(routed, _alone(model, ids, None))


def test_all_rows_one_adapter_and_single_token_steps() -> None:
    model = _llama_with_adapters()
    ids = torch.randint(3, VOCAB, (3, 1), generator=torch.Generator().manual_seed(5))
    for rows in (["all8"] * 3, ["emb2", None, "qv4"]):
        with lorakit.route_rows(model, rows), torch.no_grad():
            mixed = model(input_ids=ids).logits
        for i, name in enumerate(rows):
            torch.testing.assert_close(mixed[i:i + 1], _alone(model, ids[i:i + 1], name), rtol=1e-5, atol=1e-5)


def test_gpt2_fused_qv_slices_and_conv1d() -> None:
    model = make("gpt2")
    lorakit.add_adapter(model, LoraConfig(r=4, init_lora_weights=False), "qv", activate=False)  # c_attn q,v slices
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=["c_proj"], init_lora_weights=False), "proj",
                        activate=False)
    ids = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(6))
    rows = ["proj", "qv", None]
    with lorakit.route_rows(model, rows), torch.no_grad():
        mixed = model(input_ids=ids).logits
    for i, name in enumerate(rows):
        torch.testing.assert_close(mixed[i:i + 1], _alone(model, ids[i:i + 1], name), rtol=1e-5, atol=1e-5)


def test_classification_heads_per_row() -> None:
    model = make("roberta")
    for seed, name in enumerate(("sst", "mnli")):
        torch.manual_seed(seed)
        lorakit.add_adapter(model, LoraConfig(r=4, modules_to_save=["classifier"], init_lora_weights=False), name,
                            activate=False)
        for p in model.classifier.modules_to_save[name].parameters():  # a trained head differs from the base's
            torch.nn.init.normal_(p, std=0.5)
    ids = torch.randint(3, VOCAB, (3, 8), generator=torch.Generator().manual_seed(7))
    rows = ["mnli", None, "sst"]
    with lorakit.route_rows(model, rows), torch.no_grad():
        mixed = model(input_ids=ids).logits
    for i, name in enumerate(rows):
        torch.testing.assert_close(mixed[i:i + 1], _alone(model, ids[i:i + 1], name), rtol=1e-5, atol=1e-5)


def test_bad_routing_is_refused() -> None:
    model = _llama_with_adapters()
    ids = torch.randint(3, VOCAB, (2, 4))
    with pytest.raises(KeyError, match="nope"), lorakit.route_rows(model, ["nope", None]):
        pass
    with lorakit.route_rows(model, ["qv4"]), pytest.raises(ValueError, match="2 rows but the routing names 1"):
        model(input_ids=ids)
    lorakit.set_active_adapters(model, ["qv4"])
    lorakit.merge_adapters(model)
    with pytest.raises(RuntimeError, match="unmerge first"), lorakit.route_rows(model, ["qv4", None]):
        pass
