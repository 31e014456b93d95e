"""What an adapter is: rank, alpha, targets. Field names follow PEFT's ``LoraConfig`` on purpose, so an
``adapter_config.json`` reads the same to both tools."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

Bias = Literal["none", "all", "lora_only"]

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
        if not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"LoraConfig.bias must be 'none', 'all' or 'lora_only', got {self.bias!r}")
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = list(self.target_modules)
        for name, mask in self.fused_modules.items():
            if not mask or not all(isinstance(m, bool) for m in mask) or not any(mask):
                raise ValueError(f"LoraConfig.fused_modules[{name!r}] must be a list of booleans with at "
                                 f"least one True, got {mask!r}")

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
    def rank_for(self, module_path: str) -> int:
        return _pattern_value(self.rank_pattern, module_path, self.r)

    def alpha_for(self, module_path: str) -> float:
        return _pattern_value(self.alpha_pattern, module_path, self.lora_alpha)

    def fused_mask_for(self, module_path: str) -> list[bool] | None:
        for name, mask in self.fused_modules.items():
            if name_matches(name, module_path):
                return list(mask)
        return None

    def is_target(self, module_path: str) -> bool:
        return _matches(self.target_modules, module_path) and not _matches(self.exclude_modules, module_path)


def name_matches(name: str, module_path: str) -> bool:
    """PEFT's rule for a plain name: the whole path, or its last dotted components."""
    return module_path == name or module_path.endswith("." + name)


def _matches(spec: list[str] | str | None, module_path: str) -> bool:
    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, module_path) is not None
    return any(name_matches(name, module_path) for name in spec)


def _pattern_value(patterns: dict, module_path: str, default):
    """PEFT's ``rank_pattern`` / ``alpha_pattern``: keys are regexes matched against the path's end."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default
