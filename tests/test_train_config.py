"""TrainConfig: every setting's type and range checked once, the key and its source (file or flag) named."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from lorakit.cli import main
from lorakit.train.config import ConfigError, TrainConfig, parse_duration, parse_flags

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(("setting", "message"), [
    ('lora_rank = "8"', "lora_rank: expected an integer, got '8'"),
    ('lr = "fast"', "lr: expected a number, got 'fast'"),
    ("batch_size = 2.5", "batch_size: expected an integer, got 2.5"),
    ("epochs = [1]", "epochs: expected a number, got [1]"),
    ("max_steps = 2.7", "max_steps: expected an integer, got 2.7"),
    ('rslora = "no"', "rslora: expected true or false, got 'no'"),
    ("full_finetune = 1", "full_finetune: expected true or false, got 1"),
    ("lora_rank = true", "lora_rank: expected an integer, got True"),
    ('target_modules = "q_proj"', "target_modules: expected a list of strings, got 'q_proj'"),
    ("target_modules = [1, 2]", "target_modules: expected a list of strings, got [1, 2]"),
    ('precision = "fp64"', "precision: expected one of 'auto', 'fp32', 'bf16', 'fp16', got 'fp64'"),
    ("model = 3", "model: expected a string, got 3"),
    ("max_grad_norm = -1", "max_grad_norm: must be greater than 0"),
    ("max_grad_norm = nan", "max_grad_norm: must be greater than 0"),
    ("lora_alpha = 0", "lora_alpha: must be a finite number greater than 0"),
    ("lora_alpha = -16", "lora_alpha: must be a finite number greater than 0"),
    ("warmup_steps = -5", "warmup_steps: must be 0 or more"),
    ("weight_decay = -1", "weight_decay: must be a finite number, 0 or more"),
    ("lr = inf", "lr: must be a finite number greater than 0"),
    ("lora_dropout = 1.0", "lora_dropout: must be in [0, 1)"),
    ("max_train_examples = 0", "max_train_examples: must be at least 1"),
    ("samples = -1", "samples: must be 0 or more"),
    ("seed = -1", "seed: must be in"),
    ("target_modules = []", "target_modules: must name at least one module"),
    ('output = ""', "output: must not be empty"),
    ('time_budget = "soon"', "time_budget: expected a duration"),
    ("time_budget = 0", "time_budget: must be a finite number greater than 0"),
])
def test_config_file_errors_name_file_and_key(tmp_path, setting, message):
    path = tmp_path / "x.toml"
    path.write_text(setting + "\n")
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_file(path)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_json_use_rslora_string_is_not_true(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"rslora": "no"}))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: rslora: expected true or false, got 'no'"):
        TrainConfig.from_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: expected a table of settings"):
        TrainConfig.from_file(path)
    path.write_text('{"lr": 0.1, "lr": 0.2}')  # TOML refuses a repeated key; JSON's parser kept the last
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: setting 'lr' is given twice"):
        TrainConfig.from_file(path)


def test_python_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"^TrainConfig: max_grad_norm: must be greater than 0, got -1"):
        TrainConfig(max_grad_norm=-1)
    with pytest.raises(ConfigError, match=r"^TrainConfig: lora_rank: expected an integer, got '8'"):
        TrainConfig(lora_rank="8")  # type: ignore[arg-type]


def test_valid_values_are_normalised():
    config = TrainConfig(lora_alpha=16, epochs=2, target_modules=("q_proj", "v_proj"), max_grad_norm=math.inf,  # type: ignore[arg-type]
                         time_budget="6m")  # type: ignore[arg-type]
    assert config.lora_alpha == 16.0 and isinstance(config.lora_alpha, float) and isinstance(config.epochs, float)
    assert config.target_modules == ["q_proj", "v_proj"] and config.time_budget == 360.0
    assert TrainConfig(time_budget="off").time_budget is None  # type: ignore[arg-type]


def test_every_numeric_field_has_a_range():
    """A new numeric setting must say what values make sense (guards against the next max_grad_norm=-1)."""
    from lorakit.train.config import RANGES

    hints = typing.get_type_hints(TrainConfig)
    numeric = {f.name for f in dataclasses.fields(TrainConfig)
               if {int, float} & {hints[f.name], *typing.get_args(hints[f.name])}}
    assert numeric and numeric <= set(RANGES)


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("6m", 360.0), ("1h", 3600.0),
                                               ("1.5m", 90.0), ("1h30m", 5400.0), (" 2 m ", 120.0), ("45", 45.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "6x", "-5m", "6m5", "1e400"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_flags_are_converted_and_named():
    assert parse_flags({"lora_rank": "16", "lr": "1e-3", "target_modules": "q_proj,v_proj", "time_budget": "90s"}) == {
        "lora_rank": 16, "lr": 1e-3, "target_modules": ["q_proj", "v_proj"], "time_budget": "90s"}
    with pytest.raises(ConfigError, match=r"^--lora-rank: expected an integer, got '8.5'"):
        parse_flags({"lora_rank": "8.5"})
    with pytest.raises(ConfigError, match=r"^--max-grad-norm: must be greater than 0, got -1.0"):
        TrainConfig.from_flags(max_grad_norm=-1.0)


def test_flag_errors_name_the_flag_even_over_a_file(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("lora_rank = 4\nmax_grad_norm = 1.0\n")
    with pytest.raises(ConfigError, match=r"^--max-grad-norm: must be greater than 0"):
        TrainConfig.from_file(path, max_grad_norm=-1.0)
    path.write_text("lora_rank = 0\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: lora_rank: must be at least 1, got 0"):
        TrainConfig.from_file(path, lr=0.1)


@pytest.mark.parametrize("args", [
    ["--max-grad-norm", "-1"], ["--lora-alpha", "0"], ["--warmup-steps", "-5"], ["--weight-decay", "-1"],
    ["--lora-rank", "eight"], ["--batch-size", "2.5"], ["--precision", "fp64"], ["--time-budget", "soon"],
])
def test_cli_prints_one_line_and_fails(tmp_path, capsys, args):
    # a model that does not exist: should a check go missing, the run fails fast instead of training
    code = main(["train", "--output", str(tmp_path / "run"), "--model", str(tmp_path / "no-model"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"lorakit train: error: {args[0]}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_cli_output_that_is_a_file_is_named_first(tmp_path, capsys):
    """It failed with ``[Errno 17] File exists`` after the model had loaded, naming no flag."""
    (tmp_path / "run.txt").write_text("notes\n")
    code = main(["train", "--output", str(tmp_path / "run.txt"), "--model", str(tmp_path / "no-model")])
    assert code == 2 and f"--output {tmp_path / 'run.txt'} is a file: name a folder" in capsys.readouterr().err
    assert (tmp_path / "run.txt").read_text() == "notes\n"


def test_cli_config_file_error_is_one_line_without_traceback(tmp_path):
    """A real ``lorakit train`` process: one line naming file and key, non-zero exit, no traceback."""
    path = tmp_path / "x.toml"
    path.write_text('lora_rank = "8"\n')
    proc = subprocess.run([str(BIN / "lorakit"), "train", "--config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"lorakit train: error: {path}: lora_rank: expected an integer, got '8'\n"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_train_help_describes_the_settings(capsys):
    """``lorakit train --help`` says what the settings mean (from the comments beside TrainConfig's fields)."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, words in [("--data DATA", "your file or a hub id"), ("--eval-data EVAL_DATA", "validation file"),
                        ("--eval-every EVAL_EVERY", "steps between evaluations"),
                        ("--early-stopping-patience EARLY_STOPPING_PATIENCE", "without a better eval_metric"),
                        ("--columns COLUMNS", "map your file's column names"), ("--max-steps MAX_STEPS", "overrides")]:
        assert f"{flag} " in text and words in text.split(f"{flag} ", 1)[1][:200], flag
