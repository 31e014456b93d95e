"""An adapter's tensors under PEFT's names (``base_model.model.<path>.lora_A.weight``), out and in.

Reading in is two-phase: every tensor is checked and converted first, and only then copied into the
model, so a bad file never leaves an adapter half loaded. The layout (PEFT's keys and the shapes they must
have, heads that take the file's number of labels) and the check of a file's tensors against it are
defined here once, for loading into modules and for the server's routed path (``routing``) alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .layers import FusedLinear, features
from .model import adapter_config, lora_layers, saved_modules, trainable_biases

PEFT_PREFIX = "base_model.model."


class AdapterMismatchError(ValueError):
    """The tensors offered do not fit the adapter's place in this model (names or shapes)."""


class AdapterFormatError(ValueError):
    """An adapter file that cannot be read: names the file and what is wrong in it."""


def peft_key(path: str, rel: str) -> str:
    """PEFT's name for parameter ``rel`` of the module at ``path``."""
    return f"{PEFT_PREFIX}{path}.{rel}"


def lora_factor_shapes(path: str, base: nn.Module, rank: int) -> dict[str, list[int]] | None:
    """PEFT's keys and shapes of the A and B factors of a rank-``rank`` LoRA on ``base`` (a fused q/k/v
    LoRA is saved as the equivalent plain one of rank k*r); ``None`` for a module LoRA does not support."""
    if isinstance(base, nn.Embedding):
        return {peft_key(path, "lora_embedding_A"): [rank, base.num_embeddings],
                peft_key(path, "lora_embedding_B"): [base.embedding_dim, rank]}
    if isinstance(base, (nn.Linear, Conv1D)):
        in_dim, out_dim, _ = features(base)
        return {peft_key(path, "lora_A.weight"): [rank, in_dim], peft_key(path, "lora_B.weight"): [out_dim, rank]}
    return None


def head_outputs_in_file(path: str, original: nn.Module, tensors: dict[str, torch.Tensor]) -> int | None:
    """The number of outputs a ``modules_to_save`` Linear (a classification head) has in the file, when it
    differs from ``original``'s and only that differs; ``None`` otherwise (the tensor check then judges)."""
    saved = tensors.get(peft_key(path, "weight"))
    if (not isinstance(original, nn.Linear) or saved is None or saved.ndim != 2
            or saved.shape[1] != original.in_features or saved.shape == original.weight.shape):
        return None
    return int(saved.shape[0])


def resized_head(original: nn.Linear, outputs: int, device: torch.device, dtype: torch.dtype) -> nn.Linear:
    """A Linear like ``original`` with ``outputs`` outputs (its values are set by the caller)."""
    return nn.Linear(original.in_features, outputs, bias=original.bias is not None, device=device, dtype=dtype)


def check_adapter_tensors(expected: dict[str, list[int]], tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise naming ``source`` and the tensor unless ``tensors`` has exactly the ``expected`` keys, each with
    its shape, floating point and finite (a NaN or infinity would reach every output of every request)."""
    check_tensor_names(expected, tensors, source, expected.__getitem__)
    for key, shape in expected.items():
        value = tensors[key]
        if list(value.shape) != shape:
            raise AdapterMismatchError(f"{source}: tensor {key!r} has shape {list(value.shape)}, expected {shape}")
        if not value.is_floating_point():
            raise AdapterMismatchError(f"{source}: tensor {key!r} has dtype {value.dtype}, expected floats")
        if not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise AdapterFormatError(f"{source}: tensor {key!r} has {bad} non-finite value{'s' if bad > 1 else ''} "
                                     "(NaN or infinity)")


def check_update_range(where: str, a: torch.Tensor, b: torch.Tensor, scaling: float, dtype: torch.dtype) -> None:
    """``AdapterFormatError`` naming ``where`` unless factors A and B and every entry of the update
    ``scaling * B @ A`` fit in ``dtype``: finite factors can still overflow once cast or multiplied (a huge
    ``lora_alpha``, or values near the format's limit), which would make every output of the adapter NaN.
    The bound is max|B| * max|A| * rank * |scaling|, a few reductions, no product formed."""
    limit = torch.finfo(dtype).max
    peaks = [float(t.detach().abs().max()) if t.numel() else 0.0 for t in (a, b)]
    bound = abs(scaling) * a.shape[0] * math.prod(peaks)
    if not abs(scaling) <= limit:  # written so that NaN fails too, here and below
        problem = f"its scaling (lora_alpha/r) {scaling:.3g}"
    elif not max(peaks) <= limit:
        problem = f"a factor's value {max(peaks):.3g}"
    elif not bound <= limit:
        problem = f"the update (scaling {scaling:.3g}) x B @ A, which can reach {bound:.3g},"
    else:
        return
    raise AdapterFormatError(f"{where}: {problem} is beyond {dtype}'s range ({limit:.3g}): every output of this "
                             "adapter would be infinite or NaN; check lora_alpha and the tensors")


def check_adapter_range(model: nn.Module, name: str, source: str) -> None:
    """``check_update_range`` for every layer of adapter ``name`` as loaded in ``model``."""
    for path, layer in lora_layers(model):
        if name in layer.adapter_names:
            params = dict(layer.adapter_named_parameters(name))
            a = next(p for rel, p in params.items() if rel.startswith(("lora_A", "lora_embedding_A")))
            b = next(p for rel, p in params.items() if rel.startswith(("lora_B", "lora_embedding_B")))
            check_update_range(f"{source}: {path}", a, b, layer.scaling[name], a.dtype)


@dataclass
class _SavedTensor:
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


def _saved_tensors(model: nn.Module, name: str) -> dict[str, _SavedTensor]:
    """Every tensor of adapter ``name``, by its PEFT key."""
    config = adapter_config(model, name)
    saved: dict[str, _SavedTensor] = {}
    for path, layer in lora_layers(model):
        if name not in layer.adapter_names:
            continue
        for rel, param in layer.adapter_named_parameters(name):
            saved[peft_key(path, rel)] = _SavedTensor(param, lambda p=param: p, _identity)
        if isinstance(layer, FusedLinear):  # PEFT has no slice LoRA: save the equivalent rank k*r LoRA
            b_key = peft_key(path, "lora_B.weight")
            saved[b_key] = _SavedTensor(
                layer.lora_B[name].weight,
                lambda lay=layer: lay.to_full_rank_lora(name)[1],
                lambda t, lay=layer: lay.from_full_rank_lora(t, lay.r[name]),
            )
    for path, wrapper in saved_modules(model):
        if name in wrapper.adapter_names:
            for rel, param in wrapper.modules_to_save[name].named_parameters():
                saved[peft_key(path, rel)] = _SavedTensor(param, lambda p=param: p, _identity)
    for path, param in trainable_biases(model, name, config):
        saved[f"{PEFT_PREFIX}{path}"] = _SavedTensor(param, lambda p=param: p, _identity)
    return saved


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """The tensors that make up adapter ``name``, detached copies under PEFT's key names."""
    return {key: entry.export().detach().clone().contiguous() for key, entry in _saved_tensors(model, name).items()}


@torch.no_grad()
def load_adapter_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], name: str = "default",
                            source: str = "adapter") -> None:
    """Copy ``tensors`` (PEFT names) into adapter ``name``, all or nothing.

    Raises ``AdapterMismatchError`` naming the first missing or unexpected key, or the tensor whose shape
    differs (expected and actual), or ``AdapterFormatError`` for a non-finite tensor, before anything in
    the model has changed.
    """
    saved = _saved_tensors(model, name)
    check_adapter_tensors({key: entry.saved_shape for key, entry in saved.items()}, tensors, source)
    staged: list[tuple[torch.Tensor, torch.Tensor]] = []
    for key, entry in saved.items():
        try:
            converted = entry.import_(tensors[key])
        except ValueError as err:
            raise AdapterMismatchError(f"{source}: tensor {key!r}: {err}") from err
        staged.append((entry.param, converted))
    for param, value in staged:
        param.copy_(value)
