"""Hostile and careless adapter files (issue 11, items 4 and 8): every one is a load error naming the file and
the tensor or key, through ``load_adapter`` and the server's routed path alike, and the model is unchanged."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO, make
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_adapter_files import Unchanged

import lorakit
from lorakit import AdapterFormatError, LoraConfig
from lorakit.adapters import CONFIG_NAME, WEIGHTS_NAME
from lorakit.adapters.io import read_adapter
from lorakit.lora.routing import plan_routed_adapter

ISSUE_REGEX = "(.*)(.*)(.*)(.*)(.*)(.*)(.*)(.*)X"  # 38.6 s of CPU per load with re
BACKTRACKING = r"(\w|\.|[a-z])*(?=j)j."  # catastrophic for the regex package too (each name ending in "proj")


@pytest.fixture
def folder(tmp_path) -> Path:
    model = make("llama")
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return lorakit.save_adapter(model, tmp_path / "adapter")


@pytest.fixture
def served() -> tuple[torch.nn.Module, Unchanged]:
    model = make("llama", seed=1)
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=["q_proj"]), name="existing")
    return model, Unchanged(model)


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(config))  # json writes NaN / Infinity as Python reads them


def _edit_header(folder: Path, lorakit_entry: str) -> None:
    tensors = load_file(folder / WEIGHTS_NAME)
    save_file(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt", "lorakit": lorakit_entry})


def _both_paths_refuse(folder: Path, served, match: str, error: type[Exception] = ValueError) -> None:
    """``load_adapter`` and the server's read + plan both raise, and the served model is unchanged."""
    model, unchanged = served
    with pytest.raises(error, match=match):
        lorakit.load_adapter(model, folder, name="new")
    unchanged.check()
    with pytest.raises(error, match=match):
        config, tensors, _ = read_adapter(folder)
        plan_routed_adapter(model, config, tensors, source=str(folder / WEIGHTS_NAME))
    unchanged.check()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_load_errors(folder, served, value):
    tensors = load_file(folder / WEIGHTS_NAME)
    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        meta = f.metadata()
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors[key][3, 1] = value
    save_file(tensors, folder / WEIGHTS_NAME, metadata=meta)
    _both_paths_refuse(folder, served, rf"{WEIGHTS_NAME}: tensor '{key}' has 1 non-finite value")


@pytest.mark.parametrize(("scale", "alpha", "match"), [
    (1.0, 1e308, r"its scaling \(lora_alpha/r\) 5e\+307 is beyond torch.float32's range"),
    (1e20, 4.0, r"the update \(scaling 2\) x B @ A, which can reach .* is beyond torch.float32's range"),
])
def test_finite_values_that_overflow_once_used_are_load_errors(folder, served, scale, alpha, match):
    """Finite in the file, infinite in every output: ``lora_alpha: 1e308`` (alpha / r overflows float32), or
    factors whose product does."""
    _edit_config(folder, lora_alpha=alpha)
    tensors = load_file(folder / WEIGHTS_NAME)
    with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
        meta = f.metadata()
    save_file({k: v * scale for k, v in tensors.items()}, folder / WEIGHTS_NAME, metadata=meta)  # A and B
    _both_paths_refuse(folder, served, rf"{WEIGHTS_NAME}: model.layers.0.self_attn.q_proj: {match}",
                       AdapterFormatError)


@pytest.mark.parametrize(("change", "match"), [
    ({"lora_alpha": math.nan}, r"'lora_alpha'.*finite.*nan"),
    ({"lora_alpha": math.inf}, r"'lora_alpha'.*finite.*inf"),
    ({"lora_alpha": "lots"}, r"'lora_alpha'.*number.*'lots'"),
    ({"lora_alpha": True}, r"'lora_alpha'.*number.*True"),
    ({"r": -3}, r"'r'.*positive integer"),
    ({"r": 2.0}, r"'r'.*positive integer"),
    ({"r": "8"}, r"'r'.*positive integer"),
    ({"lora_dropout": math.nan}, r"'lora_dropout'.*\[0, 1\)"),
    ({"lora_dropout": 1.0}, r"'lora_dropout'.*\[0, 1\)"),
    ({"lora_dropout": "0.1"}, r"'lora_dropout'.*number"),
    ({"rank_pattern": {"q_proj": 0}}, r"'rank_pattern'.*'q_proj'.*positive integer"),
    ({"rank_pattern": {"q_proj": 2.5}}, r"'rank_pattern'.*'q_proj'.*positive integer"),
    ({"alpha_pattern": {"q_proj": math.nan}}, r"'alpha_pattern'.*'q_proj'.*finite"),
    ({"alpha_pattern": []}, r"'alpha_pattern'.*object"),
    ({"target_modules": 7}, r"'target_modules'"),
    ({"target_modules": ["q_proj", 3]}, r"'target_modules'"),
    ({"target_modules": "q_proj[("}, r"'target_modules'.*regular expression"),
    ({"target_modules": "a" * 5000}, r"'target_modules'.*5000 characters"),
    ({"modules_to_save": "lm_head"}, r"'modules_to_save'.*list"),
    ({"use_rslora": "no"}, r"'use_rslora'.*true or false"),
    ({"fan_in_fan_out": "yes"}, r"'fan_in_fan_out'.*true or false"),
    ({"inference_mode": 1}, r"'inference_mode'.*true or false"),
    ({"task_type": 5}, r"'task_type'.*string"),
    ({"base_model_name_or_path": ["x"]}, r"'base_model_name_or_path'.*string"),
    ({"peft_type": 1}, r"'peft_type'"),
    ({"init_lora_weights": 1.5}, r"'init_lora_weights'"),
])
def test_bad_config_values_name_file_and_key(folder, served, change, match):
    _edit_config(folder, **change)
    _both_paths_refuse(folder, served, rf"{CONFIG_NAME}: .*{match}", AdapterFormatError)


@pytest.mark.parametrize("entry", ["[1, 2]", '"text"', "7", '{"rank_pattern": [1]}', '{"fused_modules": {"q": "yes"}}',
                                   '{"model_type": 3}', '{"alpha_pattern": {"q_proj": NaN}}'])
def test_lorakit_header_entry_of_the_wrong_shape(folder, served, entry):
    _edit_header(folder, entry)
    _both_paths_refuse(folder, served, rf"{WEIGHTS_NAME}: header entry 'lorakit'", AdapterFormatError)


def test_deeply_nested_json_is_a_format_error(folder, served):
    deep = "[" * 100_000 + "]" * 100_000  # json raises RecursionError, a RuntimeError, for this
    (folder / CONFIG_NAME).write_text(deep)
    _both_paths_refuse(folder, served, rf"{CONFIG_NAME}: JSON nested too deeply", AdapterFormatError)
    _edit_header(folder, deep)
    (folder / CONFIG_NAME).write_text(json.dumps({"r": 2, "target_modules": ["q_proj", "v_proj"]}))
    _both_paths_refuse(folder, served, rf"{WEIGHTS_NAME}: header entry 'lorakit' is JSON nested too deeply",
                       AdapterFormatError)


def test_info_reports_bad_files_in_one_line(folder, capsys):
    from lorakit.cli import main

    _edit_header(folder, "[1, 2]")
    assert main(["info", str(folder)]) != 0  # was an AttributeError traceback
    assert "header entry 'lorakit': expected a JSON object, got list" in capsys.readouterr().err
    _edit_header(folder, "{}")
    _edit_config(folder, lora_alpha="lots")
    assert main(["info", str(folder)]) != 0  # was printed as alpha=lots
    out, err = capsys.readouterr()
    assert "alpha=lots" not in out and "key 'lora_alpha' must be a number, got 'lots'" in err


def test_the_issues_regex_fails_fast(folder, served):
    _edit_config(folder, target_modules=ISSUE_REGEX)
    start = time.monotonic()
    _both_paths_refuse(folder, served, "matched no module")
    assert time.monotonic() - start < 5  # minutes with re.fullmatch


def test_catastrophic_target_regex_is_bounded(folder, served, monkeypatch):
    monkeypatch.setattr("lorakit.lora.config.REGEX_TIME_LIMIT_S", 0.2)
    _edit_config(folder, target_modules=BACKTRACKING)
    start = time.monotonic()
    _both_paths_refuse(folder, served, r"target_modules regex took longer than 0.2 s over \d+ module names")
    assert time.monotonic() - start < 10  # two loads; unbounded this takes minutes


def test_catastrophic_rank_pattern_is_bounded(folder, served, monkeypatch):
    monkeypatch.setattr("lorakit.lora.config.REGEX_TIME_LIMIT_S", 0.2)
    _edit_config(folder, rank_pattern={BACKTRACKING: 2})
    _edit_header(folder, json.dumps({"rank_pattern": {BACKTRACKING: 2}}))  # lorakit's header has the last word
    start = time.monotonic()
    _both_paths_refuse(folder, served, r"rank_pattern regex took longer than 0.2 s over \d+ module names")
    assert time.monotonic() - start < 10


def test_regexes_still_match_as_before():
    model = make("llama")
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=r".*\.(q|v)_proj", rank_pattern={"v_proj": 3},
                                          alpha_pattern={r"layers\.1\.self_attn\.q_proj": 7}))
    layers = dict(lorakit.lora_layers(model))
    assert sorted(layers) == [f"model.layers.{i}.self_attn.{m}_proj" for i in (0, 1) for m in "qv"]
    assert layers["model.layers.0.self_attn.v_proj"].r["default"] == 3
    assert layers["model.layers.1.self_attn.q_proj"].scaling["default"] == 7 / 2


def test_failed_rollback_never_hides_the_original_error(folder, served, monkeypatch):
    def fail(r, alpha, use_rslora):  # a layer half set up (its rank recorded, its scaling not) when this raises
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("lorakit.lora.layers.lora_scaling", fail)
    model, unchanged = served
    with pytest.raises(RuntimeError, match="disk on fire"):
        lorakit.load_adapter(model, folder, name="new")
    unchanged.check()


def test_unknown_config_fields_warn_but_peft_fields_do_not(folder, served, tmp_path):
    _edit_config(folder, lora_alfa=32, extra_thing={"a": 1})
    with pytest.warns(UserWarning, match=rf"{CONFIG_NAME}: unknown field\(s\) 'extra_thing', 'lora_alfa'"):
        lorakit.load_adapter(served[0], folder, name="new")

    peft = pytest.importorskip("peft")
    base = make("llama")
    peft_model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "from_peft")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lorakit.load_adapter(make("llama"), tmp_path / "from_peft")


def test_python_dash_m_lorakit_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "lorakit", "--help"], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lorakit") and "info" in result.stdout


@pytest.mark.parametrize("change", [{"r": 10**9}, {"rank_pattern": {"q_proj": 10**9}}])
def test_a_huge_declared_rank_is_refused_before_anything_is_allocated(folder, served, change):
    """A config declaring r=1e9 over small tensors once made ``load_adapter`` try to allocate 256 GB (an
    allocator error at best, the process killed at worst): the ranks are checked against the file first."""
    _edit_config(folder, **change)
    if "rank_pattern" in change:  # lorakit's header has the last word on patterns
        _edit_header(folder, json.dumps(change))
    _both_paths_refuse(folder, served, match=r"rank 1000000000 .* largest LoRA tensor in the file has rank 2")
