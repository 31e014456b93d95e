"""What an adapter is: rank, alpha, targets. Field names follow PEFT's ``LoraConfig`` on purpose, so an
``adapter_config.json`` reads the same to both tools."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import regex
from torch import nn

Bias = Literal["none", "all", "lora_only"]

# Regexes come from adapter files, i.e. from anyone, and some backtrack for minutes over a model's module names
# (re takes 38 s on "(.*)(.*)(.*)(.*)(.*)(.*)(.*)(.*)X"; the regex package is quick on that one but not on all).
# All matching to place one adapter shares this time limit (seconds; regex may overshoot it by about 2x).
REGEX_TIME_LIMIT_S = 1.0
MAX_PATTERN_CHARS = 2000

# Per-architecture defaults (keyed by ``model.config.model_type``): the paper adapts W_q and W_v.
# ``fused``: modules that hold q, k, v stacked on the output axis, with the slices to adapt.
ARCHITECTURE_DEFAULTS: dict[str, dict] = {
    "gpt2": {"target_modules": ["c_attn"], "fused_modules": {"c_attn": [True, False, True]}},
    "bert": {"target_modules": ["query", "value"]},
    "roberta": {"target_modules": ["query", "value"]},
    "xlm-roberta": {"target_modules": ["query", "value"]},
    "deberta": {"target_modules": ["in_proj"]},
    "deberta-v2": {"target_modules": ["query_proj", "value_proj"]},
    "distilbert": {"target_modules": ["q_lin", "v_lin"]},
    **{arch: {"target_modules": ["q_proj", "v_proj"]}
       for arch in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "opt", "gptj", "phi")},
}


@dataclass
class LoraConfig:
    """Hyper-parameters of one adapter.

    ``target_modules``: a list of module names (a module matches when its dotted path equals a name or
    ends with ``.name``) or one regular expression matched against the whole path; ``None`` takes the
    architecture's default. ``fused_modules`` maps such names to the q/k/v slices to adapt (lorakit only;
    saved for PEFT as an equivalent plain LoRA of rank k*r).
    """

    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    fused_modules: dict[str, list[bool]] = field(default_factory=dict)
    bias: Bias = "none"
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    init_lora_weights: bool = True
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    task_type: str | None = None
    base_model_name_or_path: str | None = None

    def __post_init__(self) -> None:
        # every field is checked here, so Python callers and adapter files (whoever wrote them) get the
        # same errors, each naming the key, before any model changes
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_field(f.name, getattr(self, f.name)))

    def replace(self, **changes) -> LoraConfig:
        return dataclasses.replace(self, **changes)

    def resolved_for(self, model: nn.Module) -> LoraConfig:
        """This config with the architecture's defaults filled in where the user left them out."""
        if self.target_modules is not None:
            return self
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        defaults = ARCHITECTURE_DEFAULTS.get(model_type)
        if defaults is None:
            raise ValueError(f"no default LoRA targets for model type {model_type!r}: pass "
                             "target_modules (e.g. ['q_proj', 'v_proj'])")
        fused = self.fused_modules or defaults.get("fused_modules", {})
        return self.replace(target_modules=list(defaults["target_modules"]), fused_modules=dict(fused))

    # --- per-module values
    def rank_for(self, module_path: str, budget: RegexBudget | None = None) -> int:
        return _pattern_value("rank_pattern", self.rank_pattern, module_path, self.r, budget)

    def alpha_for(self, module_path: str, budget: RegexBudget | None = None) -> float:
        return _pattern_value("alpha_pattern", self.alpha_pattern, module_path, self.lora_alpha, budget)

    def fused_mask_for(self, module_path: str) -> list[bool] | None:
        for name, mask in self.fused_modules.items():
            if name_matches(name, module_path):
                return list(mask)
        return None

    def is_target(self, module_path: str, budget: RegexBudget | None = None) -> bool:
        budget = budget or RegexBudget()
        return (_matches("target_modules", self.target_modules, module_path, budget)
                and not _matches("exclude_modules", self.exclude_modules, module_path, budget))


class RegexBudget:
    """One time limit (``REGEX_TIME_LIMIT_S``) shared by all the regex matches made to place one adapter, so
    a pattern that backtracks catastrophically fails in seconds instead of stalling a load (or a server)."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = REGEX_TIME_LIMIT_S if seconds is None else seconds
        self.deadline = time.monotonic() + self.seconds
        self.names: set[str] = set()

    def match(self, key: str, pattern: str, text: str, full: bool = True) -> bool:
        """Whether ``pattern`` matches ``text`` (all of it with ``full``, else from its start)."""
        self.names.add(text)
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            found = (regex.fullmatch if full else regex.match)(pattern, text, timeout=remaining)
        except TimeoutError:
            shown = pattern if len(pattern) <= 60 else pattern[:57] + "..."
            raise ValueError(f"{key} regex took longer than {self.seconds:g} s over {len(self.names)} module "
                             f"names ({shown!r}); list module names instead or simplify it") from None
        return found is not None


def name_matches(name: str, module_path: str) -> bool:
    """PEFT's rule for a plain name: the whole path, or its last dotted components."""
    return module_path == name or module_path.endswith("." + name)


def _matches(key: str, spec: list[str] | str | None, module_path: str, budget: RegexBudget) -> bool:
    if spec is None:
        return False
    if isinstance(spec, str):
        return budget.match(key, spec, module_path)
    return any(name_matches(name, module_path) for name in spec)


def _pattern_value(key: str, patterns: dict, module_path: str, default, budget: RegexBudget | None):
    """PEFT's ``rank_pattern`` / ``alpha_pattern``: keys are regexes matched against the path's end."""
    budget = budget or RegexBudget()
    for pattern, value in patterns.items():
        if budget.match(key, rf"(.*\.)?({pattern})$", module_path, full=False):
            return value
    return default


# --- checking every field once ------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# each check takes ``key``, how to name the value in a message ("key 'r'"), and returns the value to keep
def _positive_int(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def _finite(key: str, value: Any) -> float:
    if not _is_number(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _optional_str(key: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {value!r}")
    return value


def check_pattern(key: str, pattern: Any) -> str:
    """A regex from a config (``key``: how to name where it is): a string of sane length that compiles, in
    ``regex``'s syntax (a superset of ``re``'s)."""
    if not isinstance(pattern, str):
        raise ValueError(f"{key} must hold strings, got {pattern!r}")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"{key}: a regular expression of {len(pattern)} characters is too long "
                         f"(at most {MAX_PATTERN_CHARS})")
    try:
        regex.compile(pattern)
    except regex.error as err:
        raise ValueError(f"{key}: {pattern!r} is not a valid regular expression: {err}") from None
    return pattern


def _names(key: str, value: Any, regex_allowed: bool) -> list[str] | str | None:
    if value is None:
        return None
    if isinstance(value, str) and regex_allowed:
        return check_pattern(key, value)
    if isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value):
        return list(value)
    what = "a list of module names or one regular expression" if regex_allowed else "a list of module names"
    raise ValueError(f"{key} must be {what}, got {value!r}")


def _mapping(key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be an object (a mapping), got {value!r}")
    return value


def _pattern_dict(key: str, value: Any, check) -> dict:
    out = {}
    for pattern, v in _mapping(key, value).items():
        check_pattern(key, pattern)
        out[pattern] = check(f"{key} entry {pattern!r}", v)
    return out


def _fused(key: str, value: Any) -> dict[str, list[bool]]:
    out = {}
    for name, mask in _mapping(key, value).items():
        if (not isinstance(mask, (list, tuple)) or not mask or not all(isinstance(m, bool) for m in mask)
                or not any(mask)):
            raise ValueError(f"{key} entry {name!r} must be a list of booleans with at least one true, got {mask!r}")
        out[name] = list(mask)
    return out


def _dropout(key: str, value: Any) -> float:
    if not _is_number(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{key} must be in [0, 1), got {value!r}")
    return value


def _bias(key: str, value: Any) -> str:
    if value not in ("none", "all", "lora_only") or not isinstance(value, str):
        raise ValueError(f"{key} must be 'none', 'all' or 'lora_only', got {value!r}")
    return value


_CHECKS = {
    "r": _positive_int,
    "lora_alpha": _finite,
    "lora_dropout": _dropout,
    "target_modules": lambda k, v: _names(k, v, regex_allowed=True),
    "exclude_modules": lambda k, v: _names(k, v, regex_allowed=True),
    "fused_modules": _fused,
    "bias": _bias,
    "modules_to_save": lambda k, v: _names(k, v, regex_allowed=False),
    "use_rslora": _bool,
    "init_lora_weights": _bool,
    "rank_pattern": lambda k, v: _pattern_dict(k, v, _positive_int),
    "alpha_pattern": lambda k, v: _pattern_dict(k, v, _finite),
    "task_type": _optional_str,
    "base_model_name_or_path": _optional_str,
}


def check_field(key: str, value: Any) -> Any:
    """``value`` for ``LoraConfig`` field ``key`` (lists normalised), or ``ValueError`` naming the key."""
    return _CHECKS[key](f"key {key!r}", value)
