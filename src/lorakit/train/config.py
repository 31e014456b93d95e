"""Everything a training run depends on, in one record that is saved with the run and can come from a
JSON or TOML file (command-line flags override the file)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass
class TrainConfig:
    # what
    task: str = "e2e"
    model: str = "smollm2-135m"
    data: str | None = None  # dataset root; default $LORAKIT_DATA
    output: str = "runs/e2e"
    # adapter (ignored with full_finetune)
    full_finetune: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: list[str] | None = None  # default: the architecture's (Llama q_proj, v_proj; GPT-2 q,v of c_attn)
    rslora: bool = False
    # how long
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    max_train_examples: int | None = None  # data budget: a seeded random subset of the training pairs
    # optimisation
    batch_size: int = 8  # examples per optimizer step, over all processes
    micro_batch_size: int | None = None  # examples per forward pass and process (gradient accumulation)
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    label_smoothing: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 256
    group_by_length: bool = True
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, about 1/3 more compute
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    save_every: int = 100
    keep_checkpoints: int = 2
    samples: int = 3  # dev generations printed at the end

    def __post_init__(self) -> None:
        checks = {"rank": self.rank > 0, "batch_size": self.batch_size > 0, "lr": self.lr > 0,
                  "epochs": self.epochs > 0, "save_every": self.save_every > 0, "log_every": self.log_every > 0,
                  "max_length": self.max_length > 1, "label_smoothing": 0 <= self.label_smoothing < 1,
                  "dropout": 0 <= self.dropout < 1, "keep_checkpoints": self.keep_checkpoints >= 1}
        if self.max_steps is not None:
            checks["max_steps"] = self.max_steps > 0
        if self.micro_batch_size is not None:
            checks["micro_batch_size"] = self.micro_batch_size > 0
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid training setting {bad[0]}={getattr(self, bad[0])!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read JSON or TOML; unknown keys are an error naming the key and the file."""
        path = Path(path)
        text = path.read_text()
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: {err}") from err
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
