"""An adapter's tensors under PEFT's names (``base_model.model.<path>.lora_A.weight``), out and in.

Reading in is two-phase: every tensor is checked and converted first, and only then copied into the
model, so a bad file never leaves an adapter half loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import nn

from .layers import FusedLinear
from .model import adapter_config, lora_layers, saved_modules, trainable_biases

PEFT_PREFIX = "base_model.model."


class AdapterMismatchError(ValueError):
    """The tensors offered do not fit the adapter's place in this model (names or shapes)."""


@dataclass
class _Slot:
    """One saved tensor: where it lives in the model and how it maps to the file's layout."""

    param: torch.Tensor
    export: Callable[[], torch.Tensor]
    import_: Callable[[torch.Tensor], torch.Tensor]

    @property
    def saved_shape(self) -> list[int]:
        return list(self.export().shape)


def check_tensor_names(expected: Collection[str], tensors: dict[str, torch.Tensor], source: str,
                       shape_of: Callable[[str], list[int]]) -> None:
    """Raise ``AdapterMismatchError`` naming the first missing tensor (with the shape it should have) or the
    first unexpected one, and how many more there are."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise AdapterMismatchError(f"{source}: missing tensor {missing[0]!r} (shape {shape_of(missing[0])})"
                                   + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if unexpected:
        raise AdapterMismatchError(f"{source}: unexpected tensor {unexpected[0]!r} (shape "
                                   f"{list(tensors[unexpected[0]].shape)}): this model has no such place"
                                   + (f"; {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _slots(model: nn.Module, name: str) -> dict[str, _Slot]:
    config = adapter_config(model, name)
    slots: dict[str, _Slot] = {}
    for path, layer in lora_layers(model):
        if name not in layer.adapter_names:
            continue
        for rel, param in layer.adapter_named_parameters(name):
            slots[f"{PEFT_PREFIX}{path}.{rel}"] = _Slot(param, lambda p=param: p, _identity)
        if isinstance(layer, FusedLinear):  # PEFT has no slice LoRA: save the equivalent rank k*r LoRA
            b_key = f"{PEFT_PREFIX}{path}.lora_B.weight"
            slots[b_key] = _Slot(
                layer.lora_B[name].weight,
                lambda lay=layer: lay.to_full_rank_lora(name)[1],
                lambda t, lay=layer: lay.from_full_rank_lora(t, lay.r[name]),
            )
    for path, wrapper in saved_modules(model):
        if name in wrapper.adapter_names:
            for rel, param in wrapper.modules_to_save[name].named_parameters():
                slots[f"{PEFT_PREFIX}{path}.{rel}"] = _Slot(param, lambda p=param: p, _identity)
    for path, param in trainable_biases(model, name, config):
        slots[f"{PEFT_PREFIX}{path}"] = _Slot(param, lambda p=param: p, _identity)
    return slots


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """The tensors that make up adapter ``name``, detached copies under PEFT's key names."""
    return {key: slot.export().detach().clone().contiguous() for key, slot in _slots(model, name).items()}


@torch.no_grad()
def load_adapter_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], name: str = "default",
                            source: str = "adapter") -> None:
    """Copy ``tensors`` (PEFT names) into adapter ``name``, all or nothing.

    Raises ``AdapterMismatchError`` naming the first missing or unexpected key, or the tensor whose shape
    differs (expected and actual), before anything in the model has changed.
    """
    slots = _slots(model, name)
    check_tensor_names(slots, tensors, source, lambda key: slots[key].saved_shape)
    staged: list[tuple[torch.Tensor, torch.Tensor]] = []
    for key, slot in slots.items():
        value = tensors[key]
        if list(value.shape) != slot.saved_shape:
            raise AdapterMismatchError(f"{source}: tensor {key!r} has shape {list(value.shape)}, expected "
                                       f"{slot.saved_shape}")
        if not (value.is_floating_point() or value.is_complex()):
            raise AdapterMismatchError(f"{source}: tensor {key!r} has dtype {value.dtype}, expected floats")
        try:
            converted = slot.import_(value)
        except ValueError as err:
            raise AdapterMismatchError(f"{source}: tensor {key!r}: {err}") from err
        staged.append((slot.param, converted))
    for param, value in staged:
        param.copy_(value)
