"""Adapter folders on disk: round trips, atomic saves, and bad files that must change nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import logits, make
from safetensors.torch import load_file, save_file
from torch import nn

import lorakit
from lorakit import AdapterFormatError, AdapterMismatchError, LoraConfig
from lorakit.adapters import CONFIG_NAME, WEIGHTS_NAME


def _trained(arch: str = "gpt2", **config) -> nn.Module:
    model = make(arch)
    lorakit.add_adapter(model, LoraConfig(r=4, init_lora_weights=False, **config))
    return model


class Unchanged:
    """Everything about a model that a failed load must not touch."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.structure = [(n, type(m).__name__) for n, m in model.named_modules()]
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.grads = {n: p.requires_grad for n, p in model.named_parameters()}
        self.adapters = lorakit.adapter_names(model)
        self.active = lorakit.active_adapters(model)

    def check(self) -> None:
        m = self.model
        assert [(n, type(x).__name__) for n, x in m.named_modules()] == self.structure
        assert {n: p.requires_grad for n, p in m.named_parameters()} == self.grads
        assert lorakit.adapter_names(m) == self.adapters and lorakit.active_adapters(m) == self.active
        state = m.state_dict()
        assert state.keys() == self.state.keys()
        assert all(torch.equal(state[k], v) for k, v in self.state.items())


@pytest.fixture
def saved(tmp_path) -> Path:
    return lorakit.save_adapter(_trained(), tmp_path / "adapter")


@pytest.fixture
def target() -> tuple[nn.Module, Unchanged]:
    """A model that already has one adapter, so a failed load must also leave that one alone."""
    model = make("gpt2", seed=1)
    lorakit.add_adapter(model, LoraConfig(r=2), name="existing")
    return model, Unchanged(model)


def _rewrite_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / WEIGHTS_NAME)
    from safetensors import safe_open
    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        meta = f.metadata()
    edit(tensors)
    save_file(tensors, folder / WEIGHTS_NAME, metadata=meta)


def test_round_trip_same_outputs_and_config(saved, ids, tmp_path):
    source = _trained()
    lorakit.save_adapter(source, tmp_path / "again")
    model = make("gpt2")
    config = lorakit.load_adapter(model, tmp_path / "again", name="x")
    assert config.r == 4 and config.fused_modules == {"c_attn": [True, False, True]}
    assert lorakit.active_adapters(model) == ["x"]
    torch.testing.assert_close(logits(model, ids), logits(source, ids), rtol=0, atol=1e-6)


def test_missing_key(saved, target):
    key = "base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"
    _rewrite_weights(saved, lambda t: t.pop(key))
    with pytest.raises(AdapterMismatchError, match=f"missing tensor '{key}'.*shape \\[8, 32\\]"):
        lorakit.load_adapter(target[0], saved, name="new")
    target[1].check()


def test_unexpected_key(saved, target):
    _rewrite_weights(saved, lambda t: t.update({"base_model.model.transformer.h.9.attn.c_attn.lora_A.weight":
                                                torch.zeros(8, 32)}))
    with pytest.raises(AdapterMismatchError, match=r"unexpected tensor '.*h\.9\.attn.*' \(shape \[8, 32\]\)"):
        lorakit.load_adapter(target[0], saved, name="new")
    target[1].check()


def test_wrong_shape_names_tensor_expected_and_actual(saved, target):
    key = "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"
    _rewrite_weights(saved, lambda t: t.update({key: torch.zeros(96, 6)}))
    with pytest.raises(AdapterMismatchError, match=rf"'{key}' has shape \[96, 6\], expected \[96, 8\]"):
        lorakit.load_adapter(target[0], saved, name="new")
    target[1].check()


def test_rank_in_config_disagrees_with_tensors(saved, target):
    config = json.loads((saved / CONFIG_NAME).read_text())
    config["r"] = 2
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    # the lorakit header still says 'no rank pattern', so every layer now expects rank 2
    from safetensors import safe_open
    with safe_open(str(saved / WEIGHTS_NAME), "pt") as f:
        assert json.loads(f.metadata()["lorakit"])["fused_modules"]
    with pytest.raises(AdapterMismatchError, match=r"has shape \[8, 32\], expected \[4, 32\]"):
        lorakit.load_adapter(target[0], saved, name="new")
    target[1].check()


def test_block_structure_violated(saved, target):
    key = "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"

    def poke(t):
        t[key][40, 0] = 1.0  # a row of the k slice
    _rewrite_weights(saved, poke)
    with pytest.raises(AdapterMismatchError, match="outside the enabled q/k/v blocks"):
        lorakit.load_adapter(target[0], saved, name="new")
    target[1].check()


def test_wrong_base_architecture(saved):
    model = make("llama")
    before = Unchanged(model)
    with pytest.raises(AdapterMismatchError, match="made for a 'gpt2' model, this model is 'llama'"):
        lorakit.load_adapter(model, saved)
    before.check()


def test_wrong_architecture_without_header_fails_on_names(tmp_path):
    """A PEFT-made file has no lorakit header: the module names give it away."""
    import peft
    peft.get_peft_model(make("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path)
    model = make("roberta")
    before = Unchanged(model)
    with pytest.raises(AdapterMismatchError, match=f"{WEIGHTS_NAME}: target_modules=.*matched no module"):
        lorakit.load_adapter(model, tmp_path)
    before.check()


def test_truncated_file(saved, target):
    blob = (saved / WEIGHTS_NAME).read_bytes()
    (saved / WEIGHTS_NAME).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(AdapterFormatError, match=f"{WEIGHTS_NAME}: not a readable safetensors file"):
        lorakit.load_adapter(target[0], saved, name="new")
    target[1].check()


def test_bad_json_names_line(saved, target):
    (saved / CONFIG_NAME).write_text('{\n  "r": 4,\n  "lora_alpha": oops\n}\n')
    with pytest.raises(AdapterFormatError, match=rf"{CONFIG_NAME}: invalid JSON at line 3"):
        lorakit.load_adapter(target[0], saved, name="new")
    target[1].check()


@pytest.mark.parametrize(("change", "message"), [
    ({"peft_type": "PREFIX_TUNING"}, "peft_type"),
    ({"init_lora_weights": "pissa"}, "modified base"),
    ({"use_dora": True}, "use_dora"),
    ({"r": 0}, "positive integer"),
    ({"bias": "some"}, "bias"),
])
def test_bad_config_values(saved, target, change, message):
    config = json.loads((saved / CONFIG_NAME).read_text())
    config.update(change)
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match=message):
        lorakit.load_adapter(target[0], saved, name="new")
    target[1].check()


def test_name_clash_changes_nothing(saved, target):
    with pytest.raises(ValueError, match="already has an adapter named 'existing'"):
        lorakit.load_adapter(target[0], saved, name="existing")
    target[1].check()


def test_legacy_bin_loads_with_weights_only(saved, ids, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / CONFIG_NAME).write_text((saved / CONFIG_NAME).read_text())
    tensors = load_file(saved / WEIGHTS_NAME)
    # without the lorakit header this is a plain PEFT adapter: c_attn takes the rank-8 LoRA as is
    torch.save(tensors, legacy / "adapter_model.bin")
    config = json.loads((legacy / CONFIG_NAME).read_text())
    model = make("gpt2")
    lorakit.load_adapter(model, legacy)
    source = make("gpt2")
    lorakit.load_adapter(source, saved)
    assert config["rank_pattern"]
    torch.testing.assert_close(logits(model, ids), logits(source, ids), rtol=0, atol=1e-5)


class _Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/lorakit-pwned",))


def test_pickled_code_in_bin_is_refused(saved, target, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / CONFIG_NAME).write_text((saved / CONFIG_NAME).read_text())
    torch.save({"x": _Payload()}, evil / "adapter_model.bin")
    Path("/tmp/lorakit-pwned").unlink(missing_ok=True)
    with pytest.raises(AdapterFormatError, match="cannot be read as plain tensors"):
        lorakit.load_adapter(target[0], evil, name="new")
    assert not Path("/tmp/lorakit-pwned").exists()
    target[1].check()


def test_missing_folder_and_files(tmp_path, target):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lorakit.load_adapter(target[0], tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        lorakit.load_adapter(target[0], tmp_path / "empty")
    target[1].check()


def test_save_into_existing_folder_keeps_other_files(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "log.jsonl").write_text("{}\n")
    (folder / "adapter_model.bin").write_bytes(b"stale")
    lorakit.save_adapter(_trained(), folder)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME, "log.jsonl"]


def test_failed_save_leaves_no_folder(tmp_path, monkeypatch):
    model = _trained()

    def fail(self, *a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(Path, "write_text", fail)  # the config is written after the weights
    with pytest.raises(OSError, match="disk full"):
        lorakit.save_adapter(model, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_parameter_report_matches_files(tmp_path):
    model = _trained("roberta", modules_to_save=["classifier"])
    report = lorakit.parameter_report(model)
    folder = lorakit.save_adapter(model, tmp_path / "a")
    on_disk = sum(p.stat().st_size for p in folder.iterdir())
    assert report.adapter_bytes == {"default": on_disk}
    saved_params = sum(t.numel() for t in load_file(folder / WEIGHTS_NAME).values())
    assert report.trainable == saved_params
    assert f"{report.trainable:,}" in str(report) and "on disk" in str(report)


def test_saved_adapter_has_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        folder = lorakit.save_adapter(_trained(), tmp_path / "new")  # built aside (mkdtemp is private)
        lorakit.save_adapter(_trained(), folder)  # replaced file by file (mkstemp is private)
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert {(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {0o644}
