"""How big an adapter is next to its base: the numbers that make the case for LoRA."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .adapters.io import serialize_adapter
from .lora.model import adapter_names


@dataclass(frozen=True)
class ParameterReport:
    total: int
    trainable: int
    adapter_bytes: dict[str, int]

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        text = f"trainable params: {self.trainable:,} / {self.total:,} ({self.trainable_percent:.4f}%)"
        for name, size in self.adapter_bytes.items():
            text += f"\nadapter {name!r}: {_human(size)} on disk"
        return text


def parameter_report(model: nn.Module) -> ParameterReport:
    """Total and trainable parameters (each tensor counted once, even if tied) and, for every adapter,
    the exact size of its ``adapter_model.safetensors`` plus ``adapter_config.json``."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    sizes = {}
    for name in adapter_names(model):
        config_text, blob = serialize_adapter(model, name)
        sizes[name] = len(blob) + len(config_text.encode())
    return ParameterReport(total, trainable, sizes)


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return f"{size:.1f} GB"
