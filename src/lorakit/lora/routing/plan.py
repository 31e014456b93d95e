"""Adapters attached straight from a file's tensors: plan (check and lay out), attach, detach.

Why: creating LoRA modules per adapter is slow and grows the model; a server instead checks a file's
tensors against the model once (``plan_routed_adapter``, on a loader thread: it depends on the file and
may be slow or hostile) and then copies them into the routing's banks (``attach_routed``, a millisecond or
two on the engine thread). Keys and shapes come from ``lora.state``, the one definition of the layout.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import LoraConfig, RegexBudget
from ..layers import LoraLayer, ModulesToSave, lora_scaling
from ..model import candidate_modules, make_layer, match_modules, set_module, wrappers
from ..state import (
    AdapterMismatchError,
    check_adapter_tensors,
    check_update_range,
    head_outputs_in_file,
    lora_factor_shapes,
    peft_key,
    resized_head,
)
from .rows import Factors, RowRouting


@dataclass
class RoutedAdapter:
    """An adapter file's tensors checked against a model and laid out for routing; nothing attached yet."""

    factors: dict[str, Factors] = field(default_factory=dict)  # path -> (A, B, scaling)
    layers: dict[str, nn.Module] = field(default_factory=dict)  # path -> its LoRA layer, or the module to wrap
    wrap: dict[str, list[bool] | None] = field(default_factory=dict)  # LoRA targets not wrapped yet -> fused mask
    heads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # modules_to_save path -> params

    @property
    def head_width(self) -> int | None:
        """Outputs of the (last) Linear head this adapter brings, if any."""
        widths = [t.shape[0] for params in self.heads.values() for k, t in params.items()
                  if k.endswith("weight") and t.ndim == 2]
        return widths[-1] if widths else None


def plan_routed_adapter(model: nn.Module, config: LoraConfig, tensors: dict[str, torch.Tensor],
                        source: str = "adapter", candidates: list[tuple[str, nn.Module]] | None = None,
                        head_size_from_file: bool = True) -> RoutedAdapter:
    """Check an adapter's tensors (PEFT names) against ``model`` and lay them out for ``attach_routed``,
    without changing anything. Raises ``AdapterMismatchError`` naming the key, or the tensor and both
    shapes. ``candidates``: the model's module paths, when the caller keeps them between calls."""
    config = config.resolved_for(model)
    if config.bias != "none":
        raise AdapterMismatchError(f"{source}: bias={config.bias!r}: trained biases live in the shared base "
                                   "model, so they cannot be routed per row")
    weight = next(model.parameters())
    plan, expected = RoutedAdapter(), {}
    staged: dict[str, tuple[str, str, float]] = {}  # path -> (A's key, B's key, scaling)
    budget = RegexBudget()
    try:
        targets, saved_modules = match_modules(config, candidates if candidates is not None
                                               else candidate_modules(model), budget)
        ranks = {path: (config.rank_for(path, budget), config.alpha_for(path, budget)) for path, _ in targets}
    except ValueError as err:  # a regex from the file that took too long
        raise AdapterMismatchError(f"{source}: {err}") from err
    for path, module in targets:
        base = module.base_layer if isinstance(module, LoraLayer) else module
        mask = config.fused_mask_for(path)
        r, alpha = ranks[path]
        layout = lora_factor_shapes(path, base, r * sum(mask) if mask else r)
        if layout is None or (mask and isinstance(base, nn.Embedding)):
            raise AdapterMismatchError(f"{source}: {path} is a {type(base).__name__}; LoRA supports nn.Linear, "
                                       "transformers Conv1D and nn.Embedding (fused slices: Linear/Conv1D)")
        expected.update(layout)
        staged[path] = (*layout, lora_scaling(r, alpha, config.use_rslora))
        plan.layers[path] = module
        if not isinstance(module, LoraLayer):
            plan.wrap[path] = mask
    for path, module in saved_modules:
        original = module.original_module if isinstance(module, ModulesToSave) else module
        shapes = {rel: list(p.shape) for rel, p in original.named_parameters()}
        outputs = head_outputs_in_file(path, original, tensors) if head_size_from_file else None
        if outputs is not None:  # a head with another number of labels
            shapes["weight"] = [outputs, original.in_features]
            if "bias" in shapes:
                shapes["bias"] = [outputs]
        plan.heads[path] = {}
        expected.update({peft_key(path, rel): shape for rel, shape in shapes.items()})
    if not staged:
        raise AdapterMismatchError(f"{source}: target_modules={config.target_modules!r} matched no module of "
                                   "this model")
    check_adapter_tensors(expected, tensors, source)
    cast = {"device": weight.device, "dtype": weight.dtype}
    for path, (a_key, b_key, scaling) in staged.items():
        check_update_range(f"{source}: {path}", tensors[a_key], tensors[b_key], scaling, weight.dtype)
        plan.factors[path] = (tensors[a_key].to(**cast), tensors[b_key].to(**cast), scaling)
    for path, params in plan.heads.items():
        prefix = peft_key(path, "")
        for key in expected:
            if key.startswith(prefix):
                params[key[len(prefix):]] = tensors[key].to(**cast)
    return plan


@torch.no_grad()
def attach_routed(model: nn.Module, routing: RowRouting, name: str, plan: RoutedAdapter) -> bool:
    """Put a planned adapter into ``routing`` under ``name``: target modules not yet wrapped get an empty
    LoRA layer (once; later adapters reuse it), heads get their copy in the module's wrapper. Returns
    whether modules were wrapped (the caller's list of module paths is then stale). Call it right after
    planning, on the same model. Raises nothing that the plan did not already check; on an unexpected
    error the model is left as it was."""
    if name in routing.names:
        raise ValueError(f"an adapter named {name!r} is already routed")
    wrapped: list[tuple[str, nn.Module]] = []
    heads: list[ModulesToSave] = []
    try:
        layers = dict(plan.layers)
        for path, mask in plan.wrap.items():
            original = layers[path]
            layers[path] = layer = make_layer(path, original, mask)
            layer.routing = routing
            set_module(model, path, layer)
            wrapped.append((path, original))
        for path, params in plan.heads.items():
            module = model.get_submodule(path)
            wrapper = module if isinstance(module, ModulesToSave) else ModulesToSave(module)
            if wrapper is not module:
                wrapper.routing = routing
                set_module(model, path, wrapper)
                wrapped.append((path, module))
            head = _head_copy(wrapper.original_module, params)
            wrapper.modules_to_save[name] = head
            heads.append(wrapper)
        routing.attach(name, {layers[path]: f for path, f in plan.factors.items()})
    except BaseException:
        for wrapper in heads:
            if name in wrapper.modules_to_save:
                wrapper.delete_adapter(name)
        for path, original in reversed(wrapped):
            set_module(model, path, original)
        raise
    return bool(wrapped)


def _head_copy(original: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``original`` holding ``params`` (a Linear takes the file's number of outputs)."""
    weight = params.get("weight")
    if isinstance(original, nn.Linear) and weight is not None and weight.shape != original.weight.shape:
        head = resized_head(original, weight.shape[0], weight.device, weight.dtype)
    else:
        head = copy.deepcopy(original)
    head.requires_grad_(False)
    head.eval()
    for rel, value in params.items():
        head.get_parameter(rel).copy_(value)
    return head


def detach_routed(model: nn.Module, routing: RowRouting, name: str) -> None:
    """Take adapter ``name`` out of ``routing`` and its heads out of the model; wrappers stay for later
    adapters (with no adapter they pass the base module's output through)."""
    routing.detach(name)
    for module in wrappers(model):
        if isinstance(module, ModulesToSave) and name in module.modules_to_save:
            module.delete_adapter(name)
