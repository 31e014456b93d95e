"""Per-row routing: every row of a mixed batch gets exactly what its adapter (or the base) gives alone."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, logits, make

import lorakit
from lorakit import LoraConfig
from lorakit.adapters.io import read_adapter
from lorakit.lora.routing import attach_routed, detach_routed, plan_routed_adapter
from lorakit.lora.routing.banks import FactorBank


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


# --- adapters routed straight from their files (what the server does) -------------------------------------
def _structure(model: torch.nn.Module) -> tuple:
    """Everything attaching may change: module tree and every tensor."""
    return ([(n, type(m).__name__) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def _same_structure(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def _route_files(model: torch.nn.Module, folder, names: list[str]) -> lorakit.RowRouting:
    routing = lorakit.set_row_routing(model, lorakit.RowRouting())
    for name in names:
        config, tensors, _ = read_adapter(folder / name)
        attach_routed(model, routing, name, plan_routed_adapter(model, config, tensors, source=name))
    return routing


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_adapters_routed_from_files_equal_the_same_adapters_loaded_as_modules(arch: str, tmp_path) -> None:
    """No LoRA modules are created for routed files, yet every row equals its adapter loaded the usual way
    (embedding LoRA, several ranks and targets, GPT-2's fused q,v slices and a PEFT-style plain c_attn)."""
    if arch == "llama":
        maker = _llama_with_adapters()
        makers = dict.fromkeys(["qv4", "all8", "emb2"], maker)
    else:  # a slice adapter and a plain one cannot share c_attn as modules; routed, they can
        makers = {name: make("gpt2") for name in ("qv4", "all8", "emb2")}
        lorakit.add_adapter(makers["qv4"], LoraConfig(r=4, init_lora_weights=False), "qv4")  # q,v slices
        lorakit.add_adapter(makers["all8"], LoraConfig(r=2, target_modules=["c_attn", "c_fc"],
                                                       init_lora_weights=False), "all8")  # all of c_attn, as PEFT
        lorakit.add_adapter(makers["emb2"], LoraConfig(r=2, target_modules=["wte"], init_lora_weights=False), "emb2")
    names = list(makers)
    for name, maker in makers.items():
        lorakit.save_adapter(maker, tmp_path / name, name)
    served = make(arch)
    routing = _route_files(served, tmp_path, names)
    assert not lorakit.adapter_names(served)  # no module adapters at all
    assert not [n for n, _ in served.named_parameters() if "lora" in n]
    ids = torch.randint(3, VOCAB, (5, 9), generator=torch.Generator().manual_seed(8))
    rows = ["all8", "qv4", None, "emb2", "qv4"]
    with torch.no_grad():
        routing.set_rows(rows)
        mixed = served(input_ids=ids).logits
        routing.set_rows(["all8"] * 5)
        single = served(input_ids=ids).logits
    alone = {}
    for name in names:
        alone[name] = make(arch)
        lorakit.load_adapter(alone[name], tmp_path / name, name)
    base = logits(make(arch), ids)
    for i, name in enumerate(rows):
        expected = base[i:i + 1] if name is None else logits(alone[name], ids[i:i + 1])
        torch.testing.assert_close(mixed[i:i + 1], expected, rtol=1e-5, atol=1e-5)
        if name is not None:
            assert (expected - base[i:i + 1]).abs().max() > 1e-3
    torch.testing.assert_close(single, logits(alone["all8"], ids), rtol=1e-5, atol=1e-5)


def test_in_place_update_equals_the_differentiable_one() -> None:
    """Without gradients the update is added into the base output in place; with them, out of place."""
    model = _llama_with_adapters()
    ids = torch.randint(3, VOCAB, (4, 5), generator=torch.Generator().manual_seed(9))
    with lorakit.route_rows(model, ["qv4", "all8", None, "qv4"]):
        with torch.no_grad():
            in_place = model(input_ids=ids).logits
        with torch.enable_grad():
            differentiable = model(input_ids=ids).logits
    assert differentiable.requires_grad
    torch.testing.assert_close(in_place, differentiable.detach())


def test_heads_of_different_widths_share_a_batch(tmp_path) -> None:
    """Task adapters with 1, 2 and 3 labels on one base: each row's first width columns equal that adapter
    alone, the rest are NaN."""
    for labels in (1, 2, 3):
        task = make("bert", seed=labels)
        task.classifier = torch.nn.Linear(32, labels)
        lorakit.add_adapter(task, LoraConfig(r=4, modules_to_save=["classifier"], init_lora_weights=False),
                            f"t{labels}")
        lorakit.save_adapter(task, tmp_path / f"t{labels}", f"t{labels}")
    served = make("bert")
    routing = _route_files(served, tmp_path, ["t1", "t2", "t3"])
    ids = torch.randint(3, VOCAB, (4, 6), generator=torch.Generator().manual_seed(10))
    rows = ["t3", "t1", None, "t2"]
    routing.set_rows(rows)
    with torch.no_grad():
        mixed = served(input_ids=ids).logits
    assert mixed.shape == (4, 3)
    for i, name in enumerate(rows):
        alone = make("bert")
        if name is not None:
            lorakit.load_adapter(alone, tmp_path / name, name, head_size_from_file=True)
        expected = logits(alone, ids[i:i + 1])[0]
        torch.testing.assert_close(mixed[i, :expected.shape[0]], expected, rtol=1e-5, atol=1e-5)
        assert torch.isnan(mixed[i, expected.shape[0]:]).all()


def test_a_file_that_does_not_fit_changes_nothing(tmp_path) -> None:
    maker = _llama_with_adapters()
    lorakit.save_adapter(maker, tmp_path / "qv4", "qv4")
    served = make("llama")
    routing = _route_files(served, tmp_path, ["qv4"])
    before = _structure(served)
    config, tensors, _ = read_adapter(tmp_path / "qv4")
    key = next(k for k in tensors if k.endswith("v_proj.lora_B.weight"))
    cases = {
        "missing tensor": {k: v for k, v in tensors.items() if k != key},
        "has shape": {**tensors, key: tensors[key][:, :2]},
        "unexpected tensor": {**tensors, "base_model.model.model.norm.lora_A.weight": tensors[key]},
    }
    for message, bad in cases.items():
        with pytest.raises(lorakit.AdapterMismatchError, match=message):
            plan_routed_adapter(served, config, bad, source="bad.safetensors")
    with pytest.raises(lorakit.AdapterMismatchError, match="bias='all'"):
        plan_routed_adapter(served, config.replace(bias="all"), tensors)
    head = "base_model.model.lm_head.weight"  # a language model's head must keep the base's vocabulary
    with pytest.raises(lorakit.AdapterMismatchError, match=r"lm_head\.weight' has shape"):
        plan_routed_adapter(served, config.replace(modules_to_save=["lm_head"]),
                            {**tensors, head: torch.zeros(VOCAB + 5, 32)}, head_size_from_file=False)
    with pytest.raises(ValueError, match="already routed"):
        attach_routed(served, routing, "qv4", plan_routed_adapter(served, config, tensors))
    assert _same_structure(before, _structure(served)) and routing.names == ["qv4"]


def test_detach_frees_the_adapter_and_its_head(tmp_path) -> None:
    task = make("roberta", seed=3)
    lorakit.add_adapter(task, LoraConfig(r=4, modules_to_save=["classifier"], init_lora_weights=False), "sst")
    lorakit.save_adapter(task, tmp_path / "sst", "sst")
    served = make("roberta")
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(11))
    base = logits(served, ids)
    routing = _route_files(served, tmp_path, ["sst"])
    routing.set_rows(["sst", None])
    with torch.no_grad():
        assert (served(input_ids=ids).logits[0] - base[0]).abs().max() > 1e-3
    detach_routed(served, routing, "sst")
    assert routing.names == [] and routing.rows is None
    assert not list(served.classifier.modules_to_save)
    with pytest.raises(KeyError, match="sst"):
        routing.set_rows(["sst", None])
    routing.set_rows([None, None])
    torch.testing.assert_close(logits(served, ids), base)


def test_banks_grow_and_slots_are_reused_with_every_adapter_exact(tmp_path) -> None:
    """Adapters arrive one at a time with forward passes in between (cached compositions and views exist
    when a bank moves), slots and ranks outgrow the banks, and a freed slot takes a smaller rank."""
    ranks = {"a0": 2, "a1": 8, "a2": 4, "a3": 16, "a4": 3, "a5": 1}
    maker = make("llama")
    for name, r in ranks.items():
        lorakit.add_adapter(maker, LoraConfig(r=r, init_lora_weights=False), name, activate=False)
        lorakit.save_adapter(maker, tmp_path / name, name)
    ids = torch.randint(3, VOCAB, (3, 5), generator=torch.Generator().manual_seed(12))
    expected = {name: _alone(maker, ids, name) for name in ranks}
    served = make("llama")
    routing = lorakit.set_row_routing(served, lorakit.RowRouting())

    def check(rows: list[str]) -> None:
        routing.set_rows(rows)
        with torch.no_grad():
            out = served(input_ids=ids).logits
        for i, name in enumerate(rows):
            torch.testing.assert_close(out[i], expected[name][i], rtol=1e-5, atol=1e-5)

    def attach(name: str) -> None:
        config, tensors, _ = read_adapter(tmp_path / name)
        attach_routed(served, routing, name, plan_routed_adapter(served, config, tensors))

    attached: list[str] = []
    for name in ("a0", "a1", "a2", "a3", "a4"):
        attach(name)
        attached.append(name)
        check([name] * 3)
        check([attached[0], name, attached[len(attached) // 2]])
    detach_routed(served, routing, "a3")  # rank 16 leaves; rank 1 takes its slot
    attach("a5")
    check(["a5"] * 3)
    check(["a5", "a1", "a4"])


def test_a_failed_attach_leaves_model_and_routing_as_they_were(tmp_path, monkeypatch) -> None:
    task = make("roberta", seed=4)
    config = LoraConfig(r=4, target_modules=["query", "value", "intermediate.dense"], modules_to_save=["classifier"],
                        init_lora_weights=False)  # two layer shapes: two banks
    lorakit.add_adapter(task, config, "sst")
    lorakit.save_adapter(task, tmp_path / "sst", "sst")
    served = make("roberta")
    routing = lorakit.set_row_routing(served, lorakit.RowRouting())
    before = _structure(served)
    config, tensors, _ = read_adapter(tmp_path / "sst")
    plan = plan_routed_adapter(served, config, tensors)
    calls = {"n": 0}
    original_put = FactorBank.put

    def failing_put(self, *args, **kwargs):  # the second bank fails, after the first was written
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return original_put(self, *args, **kwargs)

    monkeypatch.setattr(FactorBank, "put", failing_put)
    with pytest.raises(RuntimeError, match="simulated"):
        attach_routed(served, routing, "sst", plan)
    assert calls["n"] == 2
    assert _same_structure(before, _structure(served)) and routing.names == []
    monkeypatch.undo()
    attach_routed(served, routing, "sst", plan_routed_adapter(served, config, tensors))  # works after
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(13))
    routing.set_rows(["sst", None])
    with torch.no_grad():
        out = served(input_ids=ids).logits
    alone = make("roberta")
    lorakit.load_adapter(alone, tmp_path / "sst", "sst")
    torch.testing.assert_close(out[0], logits(alone, ids)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], logits(make("roberta"), ids)[1], rtol=1e-5, atol=1e-5)


def test_reinstalling_a_routing_keeps_its_rows() -> None:
    model = _llama_with_adapters()
    ids = torch.randint(3, VOCAB, (2, 4), generator=torch.Generator().manual_seed(14))
    expected = [_alone(model, ids[:1], "qv4"), _alone(model, ids[1:], None)]
    with lorakit.route_rows(model, ["qv4", None]) as routing, torch.no_grad():
        lorakit.set_row_routing(model, routing)  # e.g. after training: the rows stay routed
        assert routing.rows == ("qv4", None)
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out[:1], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1:], expected[1], rtol=1e-5, atol=1e-5)
