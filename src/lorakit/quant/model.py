"""Quantizing a model's frozen linear layers in place, QLoRA style: the base is stored in int8, int4, NF4 or
bf16, LoRA factors and trained heads stay in full precision.

What is quantized: every ``nn.Linear`` and GPT-2 ``Conv1D`` of the base, the base layer inside a LoRA
layer, and for int8 and bf16 the LM head (where tied to the input embedding, the head gets its own
quantized copy and the embedding lookup keeps the full-precision table). What is not: LoRA factors, classification
heads (``classifier``, ``score``: freshly trained, saved with the adapter), ``modules_to_save`` copies,
embeddings and norms.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..lora.layers import LoraLayer, ModulesToSave
from .formats import QuantWeight
from .layers import QuantizedLayer, quantized
from .probe import choose_mode

QuantMode = Literal["none", "int8", "int4", "nf4", "bf16", "auto"]
QUANT_MODES: tuple[str, ...] = ("none", "int8", "int4", "nf4", "bf16", "auto")
# Modes that quantize the LM head too, by measurement on SmolLM2 (docs/quantization.md): int8 and bf16 heads
# are 12x and 3.2x faster than fp32's (43% of a decode step) for at most 2.8 points of top-1 agreement; a 4-bit
# head is 10x slower (dequantized every call) and costs 14-16 points (1.000 -> 0.858 int4, 0.602 -> 0.441 nf4).
HEAD_MODES = ("int8", "bf16")
HEADS = ("classifier", "score")  # lorakit.tasks.HEAD_NAMES: trained whole, so kept in full precision


@dataclass
class QuantSummary:
    """What ``quantize_model`` did: the mode used (``auto`` resolved), the layers and their weights' bytes."""

    mode: str
    requested: str
    layers: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    from_cache: bool = False  # the quantized weights were read from the disk cache (``lorakit.quant.cache``)

    def __str__(self) -> str:
        if self.mode == "none":
            return f"not quantized ({'auto: none measured faster' if self.requested == 'auto' else 'none'})"
        how = f"{self.mode} (auto)" if self.requested == "auto" else self.mode
        return (f"quantized {len(self.layers)} linear layers to {how}{' (from the cache)' if self.from_cache else ''}: "
                f"their weights {self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB")


def quantize_model(model: nn.Module, mode: QuantMode = "int8", *, head: bool | None = None,
                   skip: tuple[str, ...] = HEADS, stored: Mapping[str, QuantWeight] | None = None,
                   only: Collection[str] | None = None, device: torch.device | str | None = None) -> QuantSummary:
    """Replace the frozen linear layers of ``model`` by quantized ones (``none``: leave it; ``auto``: the mode
    a short probe measured fastest here, cached). ``head``: also the LM head (``get_output_embeddings``;
    default: for int8 and bf16, see ``HEAD_MODES``); ``skip``: top-level children left alone. Layers already
    quantized are left as they are, so ``only`` (layer paths as ``quant_plan`` names them) followed by a second
    call for the rest gives a mixed plan. ``stored``: each layer's weight already quantized (by path, as the
    disk cache in ``lorakit.quant.cache`` keeps them), used instead of quantizing; every layer must have one.
    ``device``: where the model will run, what ``auto`` measures on (default: the GPU when there is one)."""
    if mode not in QUANT_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANT_MODES)}, got {mode!r}")
    resolved = choose_mode(device=device) if mode == "auto" else mode
    summary = QuantSummary(resolved, mode)
    if resolved == "none":
        return summary
    targets = quant_plan(model, resolved, head=head, skip=skip)
    if only is not None:
        if unknown := sorted(set(only) - {path for path, _, _ in targets}):
            raise ValueError(f"only: {unknown[0]!r} is not a layer left to quantize in {resolved}")
        targets = [target for target in targets if target[0] in only]
    if stored is not None and (missing := [path for path, _, _ in targets if path not in stored]):
        raise ValueError(f"no stored weight for {len(missing)} layers, e.g. {missing[0]}")
    for path, module, owner in targets:
        new = quantized(module, resolved, stored[path] if stored is not None else None)
        parent_path, _, child = path.rpartition(".")
        setattr(owner if owner is not None else (model.get_submodule(parent_path) if parent_path else model),
                child, new)
        summary.layers.append(path)
        summary.bytes_before += module.weight.numel() * module.weight.element_size()
        summary.bytes_after += new.qweight.nbytes
    _own_tensors(model)
    _trim_heap()
    return summary


def quant_plan(model: nn.Module, mode: str, *, head: bool | None = None,
               skip: tuple[str, ...] = HEADS) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """The layers ``quantize_model`` replaces in ``mode`` (resolved, not ``auto``): (path, Linear or Conv1D,
    the LoRA layer holding it or None). Looks at modules only, never at weight values."""
    head = mode in HEAD_MODES if head is None else head
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(path, module, owner) for path, module, owner in _targets(model, skip) if head or module is not output]


def _trim_heap() -> None:
    """Hand the quantization's freed temporaries back to the OS (glibc keeps them in its heap otherwise).
    Measured on SmolLM2 (int4): RSS 890 MiB after quantizing, 576 MiB after this. A no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@torch.no_grad()
def _own_tensors(model: nn.Module) -> None:
    """Copy the tensors left in full precision (embeddings, norms) into the process's own memory.

    Why: ``from_pretrained`` memory-maps the safetensors file; quantizing reads every weight, which makes
    the whole file resident, and the mapping stays while any tensor still points into it. Measured on
    SmolLM2 (int8): RSS 1121 MiB after quantizing, 715 MiB after this copy (the mapping is released)."""
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, QuantWeight):  # its codes are its own already (fresh, or read from the cache)
            continue
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                if isinstance(tensor, nn.Parameter):
                    tensor.data = tensor.data.clone()
                else:
                    store[name] = tensor.clone()


def _targets(model: nn.Module, skip: tuple[str, ...]) -> Iterator[tuple[str, nn.Module, nn.Module | None]]:
    """(path, Linear or Conv1D, the LoRA layer holding it or None), each module once."""
    seen: set[int] = set()

    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module, nn.Module | None]]:
        for name, child in module._modules.items():
            if child is None or id(child) in seen or (not prefix and name in skip):
                continue
            seen.add(id(child))
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, (ModulesToSave, QuantizedLayer)):
                continue
            if isinstance(child, LoraLayer):  # its base only: the LoRA factors are nn.Linear too
                base = child.base_layer
                if isinstance(base, (nn.Linear, Conv1D)) and not isinstance(base, QuantizedLayer):
                    yield f"{path}.base_layer", base, child
            elif isinstance(child, (nn.Linear, Conv1D)):
                yield path, child, None
            else:
                yield from walk(child, path)

    yield from walk(model, "")


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, QuantizedLayer]]:
    for path, module in model.named_modules():
        if isinstance(module, QuantizedLayer):
            yield path, module


def quant_mode(model: nn.Module) -> str | None:
    """The mode of the model's quantized layers (None: none are; the first layer's for a mixed plan)."""
    return next((layer.quant_mode for _, layer in quantized_layers(model)), None)


def describe(model: nn.Module) -> str:
    """One line for the command line: how many layers are quantized, to what, and their weights' size."""
    layers = [layer for _, layer in quantized_layers(model)]
    if not layers:
        return "not quantized"
    size = sum(layer.qweight.nbytes for layer in layers) / 2**20
    modes = Counter(layer.quant_mode for layer in layers)  # several with a mixed plan (``only=``)
    return f"{', '.join(f'{n} linear layers in {mode}' for mode, n in modes.most_common())} ({size:.1f} MiB)"


def add_quantize_flag(parser) -> None:
    """``--quantize`` as ``generate``, ``predict`` and ``serve`` take it (``train`` has it from TrainConfig)."""
    parser.add_argument("--quantize", choices=QUANT_MODES, default="none",
                        help="store the frozen base's linear layers in int8 (fastest kernel, but changes outputs "
                             "most), int4/nf4 (least memory, slower) or bf16; auto: none or bf16, whichever a "
                             "cached probe measured faster here; adapters stay fp32, unmerged. See "
                             "docs/quantization.md (default: none)")
