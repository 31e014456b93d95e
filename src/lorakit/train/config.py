"""Everything a training run depends on, in one record that is saved with the run and can come from a
JSON or TOML file (command-line flags override the file).

Every setting is checked here and nowhere else, type and range, when the record is made: a value that
would silently change what training does (``max_grad_norm = -1`` is gradient ascent, ``"no"`` is a true
string) is an error naming the key and where it came from (the file, the flag, or ``TrainConfig``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass
class TrainConfig:
    # what: a built-in task (its dataset folder in `data`), or your own file in `data` (no task)
    task: str | None = None  # e2e, webnlg, dart or a GLUE task; with neither task nor data: e2e
    model: str = "smollm2-135m"
    data: str | None = None  # with task: the dataset folder (default $LORAKIT_DATA); else your file or a hub id
    eval_data: str | None = None  # your file's validation file (or use eval_fraction)
    eval_fraction: float | None = None  # hold out a seeded fraction of your file for validation
    format: str | None = None  # force your file's format (default: detected from its keys)
    columns: str | None = None  # map your file's column names, e.g. "prompt=question,completion=answer"
    chat_template: str | None = None  # a Jinja file for a base without a chat template (messages format)
    truncation: Literal["right", "left", "drop"] = "right"  # your examples longer than max_length
    output: str = "runs/e2e"
    # adapter (ignored with full_finetune); the names PEFT's LoraConfig gives them
    full_finetune: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # default: the architecture's (Llama q_proj, v_proj; GPT-2 c_attn q,v)
    rslora: bool = False
    # how long
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    max_train_examples: int | None = None  # data budget: a seeded random subset of the training pairs
    # wall-clock budget in seconds ("90s", "6m", "1h" accepted; "off" for none): the run stops after the step
    # that spends it and saves as at a normal end; the lr schedule stays planned for the full max_steps/epochs
    time_budget: float | None = None
    # optimisation
    batch_size: int = 8  # examples per optimizer step, over all processes
    micro_batch_size: int | None = None  # examples per forward pass and process (gradient accumulation)
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    label_smoothing: float = 0.0
    max_grad_norm: float = 1.0  # inf turns clipping off
    max_length: int = 256
    group_by_length: bool = True  # similar lengths, little padding; -2 BLEU after 300 E2E steps, level at 1,100
    # batch: a batch's loss is the mean over its own target tokens (grouped by length, a batch of short targets
    # weighs each token more); uniform: its sum divided by the training set's mean target tokens per batch
    token_weighting: Literal["batch", "uniform"] = "batch"  # uniform: every target token weighs the same in any batch
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, about 1/3 more compute
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # the frozen base's linear layers stored quantized, LoRA in fp32 (QLoRA style; docs/quantization.md): int8
    # (fastest kernel, changes outputs most), int4/nf4 (least memory, slower), bf16; auto: none or bf16 as measured
    # (and none for full_finetune, which trains the base)
    quantize: Literal["none", "int8", "int4", "nf4", "bf16", "auto"] = "none"
    seed: int = 0
    # evaluation on the validation split (a task's dev split, your eval file or fraction)
    eval_every: int | None = None  # steps between evaluations (and at the end); none: no evaluation
    eval_generate: int = 0  # greedy outputs on this many validation examples, scored (BLEU, ROUGE-L, ...)
    max_eval_examples: int | None = None  # a seeded subset of the validation examples for the loss
    eval_metric: str | None = None  # what picks best/ (default: BLEU with eval_generate, the task's metric, loss)
    early_stopping_patience: int | None = None  # stop after this many evaluations without a better eval_metric
    # bookkeeping
    log_every: int = 10
    save_every: int = 100
    keep_checkpoints: int = 2
    samples: int = 3  # dev generations printed at the end

    def __post_init__(self) -> None:
        hints = _hints()
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_setting(f.name, getattr(self, f.name), hints[f.name]))
        if self.task is None and self.data is None:
            self.task = "e2e"
        _check_together(self)

    @property
    def user_data(self) -> bool:
        """Training on the user's own file (``data`` without a ``task``)."""
        return self.task is None

    @property
    def base_quantize(self) -> str:
        """How to load the base: ``quantize``, except that ``auto`` means fp32 for a full fine-tune."""
        return "none" if self.full_finetune and self.quantize == "auto" else self.quantize

    @property
    def name(self) -> str:
        """The adapter's name: the task's, or PEFT's ``default`` for a user's data."""
        return self.task or "default"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read JSON or TOML; unknown keys, wrong types and bad values are errors naming the key and the file
        (or the flag, for a value from ``overrides``: they are command-line flags)."""
        path = Path(path)
        data = read_settings(path)
        try:
            data = _renamed(data)
        except ConfigError as err:
            raise err.located(f"{path}: {err.key}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}")
        flags = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**{**data, **flags})
        except ConfigError as err:
            raise err.located(flag_name(err.key) if err.key in flags else f"{path}: {err.key}") from None

    @classmethod
    def from_flags(cls, **flags: Any) -> TrainConfig:
        """Settings from command-line flags only (``None``: not given); errors name the flag."""
        given = {k: v for k, v in flags.items() if v is not None}
        try:
            return cls(**given)
        except ConfigError as err:
            raise err.located(flag_name(err.key)) from None


# Earlier names of settings, read from older files (a run_config.json to resume) and mapped to today's.
RENAMED = {"rank": "lora_rank", "alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "target_modules"}


def read_settings(path: Path) -> dict[str, Any]:
    """A JSON or TOML file of settings as it is written (a config, or a run's ``run_config.json``); ValueError
    naming the file when it is not text, not parseable, gives a key twice or is not a table."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file ({err.reason} at byte {err.start})") from None
    try:  # a key given twice is an error in TOML; JSON's parser would keep the last silently
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text, object_pairs_hook=_unique_keys)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as err:
        raise ValueError(f"{path}: {err or 'nested too deeply'}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of settings, got {type(data).__name__}")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys all differ (``json.loads``' ``object_pairs_hook``)."""
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"setting {key!r} is given twice")
        data[key] = value
    return data


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        new = RENAMED.get(key, key)
        if new in out or (new != key and new in data):
            raise ConfigError(new, f"given twice (as {key!r}, its earlier name, and as {new!r})")
        out[new] = value
    return out


# settings that only apply to a user's own data file
USER_DATA_ONLY = ("eval_data", "eval_fraction", "format", "columns", "chat_template")


def _check_together(config: TrainConfig) -> None:
    """Settings that are wrong together, named as the fields are."""
    if config.task is not None:
        for key in USER_DATA_ONLY:
            if getattr(config, key) is not None:
                raise ConfigError(key, f"applies to your own data file (data without a task), not to task "
                                       f"{config.task!r}")
    if config.eval_data is not None and config.eval_fraction is not None:
        raise ConfigError("eval_fraction", "give eval_data or eval_fraction, not both")
    if config.quantize not in ("none", "auto") and config.full_finetune:
        raise ConfigError("quantize", "a quantized base is frozen: it trains LoRA adapters, not full_finetune")
    if config.early_stopping_patience is not None and config.eval_every is None:
        raise ConfigError("early_stopping_patience", "needs eval_every (the evaluations it counts)")


class ConfigError(ValueError):
    """A setting of the wrong type or out of range: ``str()`` is ``where: problem``."""

    def __init__(self, key: str, problem: str, where: str | None = None) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{where or f'TrainConfig: {key}'}: {problem}")

    def located(self, where: str) -> ConfigError:
        return ConfigError(self.key, self.problem, where)


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


# --- types -----------------------------------------------------------------------------------------------
def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return "a list of strings"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


def _typed(value: Any, hint: Any) -> tuple[bool, Any]:
    """(whether ``value`` has type ``hint``, the value normalised: an int given for a float becomes a float,
    a tuple of names a list). A bool is never taken for a number, nor a number for a bool."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(hint), value
    if origin is list:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return ok, list(value) if ok else value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:
            return True, float(value)
        except OverflowError:  # an int beyond float's range
            return False, value
    if hint is str:
        return isinstance(value, str), value
    raise TypeError(f"TrainConfig: no check for type {hint!r}")  # a new kind of field: add it above


def _optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); any other hint -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


# Settings given as text with their own syntax, turned into their type before the check.
_PARSERS: dict[str, Callable[[str], Any]] = {}


def check_setting(key: str, value: Any, hint: Any) -> Any:
    """The value, normalised, if it has the field's type and is in range; else ConfigError naming ``key``."""
    if isinstance(value, str) and key in _PARSERS:
        try:
            value = _PARSERS[key](value)
        except ValueError as err:
            raise ConfigError(key, str(err)) from None
    inner, optional = _optional(hint)
    if value is None and optional:
        return None
    ok, value = _typed(value, inner)
    if not ok:
        raise ConfigError(key, f"expected {_describe(inner)}, got {value!r}")
    if key in RANGES:
        test, rule = RANGES[key]
        if not test(value):
            raise ConfigError(key, f"{rule}, got {value!r}")
    return value


# --- ranges: every numeric setting must have one (tests/test_train_config.py checks) -----------------------
def _at_least(n: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= n), ("must be 0 or more" if n == 0 else f"must be at least {n}")


_POSITIVE = (lambda v: math.isfinite(v) and v > 0), "must be a finite number greater than 0"
_FRACTION = (lambda v: 0 <= v < 1), "must be in [0, 1)"
_NOT_EMPTY = (lambda v: v != ""), "must not be empty"

RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "task": _NOT_EMPTY,
    "model": _NOT_EMPTY,
    "output": _NOT_EMPTY,
    "data": _NOT_EMPTY,
    "eval_data": _NOT_EMPTY,
    "eval_fraction": ((lambda v: 0 < v < 1), "must be between 0 and 1"),
    "format": _NOT_EMPTY,
    "columns": _NOT_EMPTY,
    "chat_template": _NOT_EMPTY,
    "lora_rank": _at_least(1),
    "lora_alpha": _POSITIVE,
    "lora_dropout": _FRACTION,
    "target_modules": ((lambda v: len(v) > 0 and all(v)), "must name at least one module"),
    "epochs": _POSITIVE,
    "max_steps": _at_least(1),
    "max_train_examples": _at_least(1),
    "time_budget": _POSITIVE,
    "batch_size": _at_least(1),
    "micro_batch_size": _at_least(1),
    "lr": _POSITIVE,
    "weight_decay": ((lambda v: math.isfinite(v) and v >= 0), "must be a finite number, 0 or more"),
    "warmup_steps": _at_least(0),
    "label_smoothing": _FRACTION,
    "max_grad_norm": ((lambda v: v > 0), "must be greater than 0"),  # inf: no clipping; NaN fails
    "max_length": _at_least(2),
    "seed": ((lambda v: 0 <= v < 2**63), "must be in [0, 2**63)"),
    "log_every": _at_least(1),
    "save_every": _at_least(1),
    "keep_checkpoints": _at_least(1),
    "samples": _at_least(0),
    "eval_every": _at_least(1),
    "eval_generate": _at_least(0),
    "max_eval_examples": _at_least(1),
    "eval_metric": _NOT_EMPTY,
    "early_stopping_patience": _at_least(1),
}


# --- text forms: durations and command-line flags ------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh])")


def parse_duration(text: str) -> float | None:
    """Seconds from ``"90"``, ``"90s"``, ``"6m"``, ``"1.5h"`` or ``"1h30m"``; ``"off"``/``"none"`` -> None."""
    spec = text.strip().lower()
    if spec in ("off", "none"):
        return None
    problem = ValueError(f"expected a duration such as 90, 90s, 6m or 1h (or off), got {text!r}")
    if re.fullmatch(r"\d+(\.\d*)?|\.\d+", spec):
        seconds = float(spec)
    else:
        parts = _DURATION.findall(spec)
        if not parts or re.sub(r"\s+", "", spec) != "".join(n + u for n, u in parts):
            raise problem
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds):
        raise problem
    return seconds


_PARSERS["time_budget"] = parse_duration


def parse_flags(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line text to each setting's type (``None``: flag not given; bools come parsed already).
    Errors name the flag; ranges are checked when the TrainConfig is made."""
    hints, out = _hints(), {}
    for key, text in raw.items():
        if text is None or not isinstance(text, str):
            out[key] = text
            continue
        inner, _ = _optional(hints[key])
        try:
            if key in _PARSERS or inner is str or typing.get_origin(inner) is Literal:
                out[key] = text
            elif typing.get_origin(inner) is list:
                out[key] = [t.strip() for t in text.split(",") if t.strip()]
            else:
                out[key] = inner(text)
        except ValueError:
            raise ConfigError(key, f"expected {_describe(inner)}, got {text!r}", flag_name(key)) from None
    return out
