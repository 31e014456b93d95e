"""What to decode with: one frozen settings object shared by the library, the CLI and the benchmark."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["greedy", "beam", "sample"]
STRATEGIES: tuple[str, ...] = ("greedy", "beam", "sample")


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings; names and meanings follow Hugging Face ``generate`` so results can be compared.

    ``length_penalty``: a finished beam scores ``sum(log p) / len ** length_penalty`` (len counts generated
    tokens, EOS included), as in HF. ``early_stopping``: ``True`` stops an input once ``num_beams`` beams have
    finished; ``False`` or ``"never"`` keep going while HF's heuristic says a running beam could still win.
    ``no_repeat_ngram_size``: no n-gram occurs twice in prompt + output (0 = off). ``temperature``, ``top_k``
    (0 = off) and ``top_p`` (1.0 = off) apply to ``sample`` only, in HF's order. ``seed`` makes sampling
    reproducible per input, whatever the batch it lands in. ``stop_at_eos=False`` always writes
    ``max_new_tokens`` tokens.
    """

    strategy: Strategy = "greedy"
    max_new_tokens: int = 64
    num_beams: int = 4
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    early_stopping: bool | Literal["never"] = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if not (math.isfinite(self.temperature) and math.isfinite(self.length_penalty)):  # NaN passes any <, >
            raise ValueError(f"temperature and length_penalty must be finite numbers, got {self.temperature} and "
                             f"{self.length_penalty}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use strategy='greedy' for argmax), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def replace(self, **changes) -> DecodeConfig:
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """The settings this strategy uses, as ``key=value`` (greedy has no beams and no temperature)."""
        used = {"greedy": (), "beam": ("num_beams", "length_penalty", "early_stopping"),
                "sample": ("temperature", "top_k", "top_p", "seed")}[self.strategy]
        keys = ("strategy", "max_new_tokens", *used, "no_repeat_ngram_size", "stop_at_eos")
        return ", ".join(f"{k}={getattr(self, k)}" for k in keys)


# The LoRA paper's decoding (Hu et al. 2021, Table 11): beam 10, no_repeat_ngram_size 4, length penalty 0.9 on
# E2E and 0.8 on WebNLG and DART; 64 new tokens as in the paper's code (``--eval_len 64``).
PRESETS: dict[str, DecodeConfig] = {
    "e2e": DecodeConfig("beam", max_new_tokens=64, num_beams=10, length_penalty=0.9, no_repeat_ngram_size=4),
    "webnlg": DecodeConfig("beam", max_new_tokens=64, num_beams=10, length_penalty=0.8, no_repeat_ngram_size=4),
    "dart": DecodeConfig("beam", max_new_tokens=64, num_beams=10, length_penalty=0.8, no_repeat_ngram_size=4),
    "greedy": DecodeConfig("greedy", max_new_tokens=64),
}
E2E_PAPER = PRESETS["e2e"]


def preset(name: str, **changes) -> DecodeConfig:
    """A named preset (``e2e``, ``webnlg``, ``dart``, ``greedy``) with optional field changes."""
    if name not in PRESETS:
        raise ValueError(f"unknown decoding preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes)
