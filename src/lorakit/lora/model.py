"""Putting adapters into a model and managing them: add, activate, disable, merge, delete.

The model stays the same ``nn.Module`` object (no wrapper class): target modules are swapped in place for
LoRA layers that hold the original as ``base_layer``, and deleting the last adapter swaps the originals
back. Every operation either completes or leaves the model as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import LoraConfig, RegexBudget, name_matches
from .layers import Embedding, FusedLinear, Linear, LoraLayer, ModulesToSave, quant_mode_of

_CONFIGS = "_lorakit_configs"
_ACTIVE = "_lorakit_active"


# --- looking around -----------------------------------------------------------------------------------
def adapter_configs(model: nn.Module) -> dict[str, LoraConfig]:
    """The adapters in ``model`` by name, in the order they were added."""
    return getattr(model, _CONFIGS, {})


def adapter_names(model: nn.Module) -> list[str]:
    return list(adapter_configs(model))


def active_adapters(model: nn.Module) -> list[str]:
    return list(getattr(model, _ACTIVE, []))


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for path, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield path, module


def saved_modules(model: nn.Module) -> Iterator[tuple[str, ModulesToSave]]:
    for path, module in model.named_modules():
        if isinstance(module, ModulesToSave):
            yield path, module


def wrappers(model: nn.Module) -> Iterator[LoraLayer | ModulesToSave]:
    for _, module in model.named_modules():
        if isinstance(module, (LoraLayer, ModulesToSave)):
            yield module


def adapter_config(model: nn.Module, name: str) -> LoraConfig:
    """The config of adapter ``name``; KeyError naming the adapters there are."""
    configs = adapter_configs(model)
    if name not in configs:
        raise KeyError(f"no adapter named {name!r}; the model has {list(configs) or 'none'}")
    return configs[name]


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


# --- adding and removing ------------------------------------------------------------------------------
def candidate_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Module paths as the user knows them: LoRA layers count as the module they wrap, and nothing
    inside a wrapper (its base layer, its adapters, saved copies) is a candidate itself."""
    seen: set[int] = set()

    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
        for child_name, child in module._modules.items():
            if child is None or id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}.{child_name}" if prefix else child_name
            yield path, child
            if not isinstance(child, (LoraLayer, ModulesToSave)):
                yield from walk(child, path)

    seen.add(id(model))
    yield from walk(model, "")


def make_layer(path: str, module: nn.Module, fused_mask: list[bool] | None) -> LoraLayer:
    if fused_mask is not None:
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise TypeError(f"{path}: fused q/k/v LoRA needs nn.Linear or Conv1D, got {type(module).__name__}")
        return FusedLinear(module, fused_mask)
    if isinstance(module, (nn.Linear, Conv1D)):
        return Linear(module)
    if isinstance(module, nn.Embedding):
        return Embedding(module)
    raise TypeError(f"{path}: LoRA supports nn.Linear, transformers Conv1D and nn.Embedding, not "
                    f"{type(module).__name__}")


def _check_layer_kind(path: str, layer: LoraLayer, fused_mask: list[bool] | None) -> None:
    existing = layer.enable_lora if isinstance(layer, FusedLinear) else None
    if existing != fused_mask:
        raise ValueError(f"{path} already holds a LoRA with q/k/v slices {existing}; a second adapter there "
                         f"must use the same slices, got {fused_mask}")


def add_adapter(model: nn.Module, config: LoraConfig | None = None, name: str = "default",
                activate: bool = True) -> nn.Module:
    """Add a LoRA adapter called ``name``; with ``activate`` it becomes the only active adapter and the
    only trainable part of the model (with its biases and ``modules_to_save`` copies)."""
    config = (config or LoraConfig()).resolved_for(model)
    if name in adapter_configs(model):
        raise ValueError(f"the model already has an adapter named {name!r}")
    if not name or "." in name:
        raise ValueError(f"adapter names must be non-empty and contain no '.', got {name!r}")
    with rollback_on_error(model, name):
        _inject(model, config, name)
        if activate:
            set_active_adapters(model, [name])
            set_trainable(model, name)
        else:
            set_active_adapters(model, active_adapters(model))
            _set_adapter_grad(model, name, False)  # an inactive adapter is not trained (set_trainable changes that)
    return model


def _set_adapter_grad(model: nn.Module, name: str, trainable: bool) -> None:
    """``requires_grad`` of adapter ``name``'s own parameters: A/B and its ``modules_to_save`` copies."""
    for _, layer in lora_layers(model):
        if name in layer.adapter_names:
            for p in layer.adapter_parameters(name):
                p.requires_grad_(trainable)
    for _, wrapper in saved_modules(model):
        if name in wrapper.adapter_names:
            wrapper.modules_to_save[name].requires_grad_(trainable)


def match_modules(config: LoraConfig, candidates: Iterable[tuple[str, nn.Module]], budget: RegexBudget | None = None
                  ) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """(LoRA targets, ``modules_to_save``) of ``config`` among ``candidates`` (module paths).

    Regexes (``target_modules``, ``exclude_modules``) run within ``budget`` (default: a fresh one): a ValueError
    says when one took too long, since they come from adapter files."""
    budget = budget or RegexBudget()
    # a path can only match a name by its last component: skip the rest without matching (keeps this fast)
    names = [*(config.target_modules if isinstance(config.target_modules, list) else []),
             *(config.modules_to_save or [])]
    lasts = None if isinstance(config.target_modules, str) else {n.rpartition(".")[2] for n in names}
    targets, saved = [], []
    for path, module in candidates:
        if lasts is not None and path.rpartition(".")[2] not in lasts:
            continue
        if config.is_target(path, budget):
            targets.append((path, module))
        elif config.modules_to_save and any(name_matches(m, path) for m in config.modules_to_save):
            saved.append((path, module))
    return targets, saved


def _inject(model: nn.Module, config: LoraConfig, name: str) -> None:
    budget = RegexBudget()
    targets, saved = match_modules(config, candidate_modules(model), budget)
    if not targets:
        sample = [p for p, m in candidate_modules(model) if isinstance(m, (nn.Linear, Conv1D))][:8]
        raise ValueError(f"target_modules={config.target_modules!r} matched no module; Linear modules here "
                         f"include {sample}")
    configs = dict(adapter_configs(model))
    configs[name] = config
    setattr(model, _CONFIGS, configs)
    for path, module in targets:
        mask = config.fused_mask_for(path)
        if isinstance(module, LoraLayer):
            _check_layer_kind(path, module, mask)
            layer = module
        else:
            layer = make_layer(path, module, mask)
            set_module(model, path, layer)
        layer.add_adapter(name, config.rank_for(path, budget), config.alpha_for(path, budget), config.lora_dropout,
                          config.use_rslora, config.init_lora_weights)
    for path, module in saved:
        wrapper = module if isinstance(module, ModulesToSave) else ModulesToSave(module)
        wrapper.add_adapter(name)
        if wrapper is not module:
            set_module(model, path, wrapper)


@contextmanager
def rollback_on_error(model: nn.Module, name: str) -> Iterator[None]:
    """Undo everything done to adding adapter ``name`` if the block raises: layers, configs, active
    adapters and ``requires_grad`` flags return to what they were."""
    snapshot = _Snapshot(model)
    try:
        yield
    except BaseException as err:
        try:
            snapshot.restore(model, name)
        except Exception as undo:  # the caller must see what went wrong first, not a follow-on error
            err.add_note(f"lorakit: undoing the failed add of adapter {name!r} also failed ({undo!r}); "
                         "the model may be left changed")
        raise


class _Snapshot:
    """What ``add_adapter`` may change besides the new adapter itself, to undo a failed add."""

    def __init__(self, model: nn.Module) -> None:
        self.active = active_adapters(model)
        self.configs = dict(adapter_configs(model))
        self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}

    def restore(self, model: nn.Module, name: str) -> None:
        if name not in self.configs:  # never touch an adapter that was there before
            _remove_from_layers(model, name)
        setattr(model, _CONFIGS, self.configs)
        set_active_adapters(model, self.active)
        for n, p in model.named_parameters():
            if n in self.requires_grad:
                p.requires_grad_(self.requires_grad[n])


def _remove_from_layers(model: nn.Module, name: str) -> None:
    for path, module in list(lora_layers(model)) + list(saved_modules(model)):
        if name in module.adapter_names:
            if isinstance(module, LoraLayer) and name not in module.scaling:
                _strip_half_added(module, name)
            else:
                module.delete_adapter(name)
        if not module.adapter_names:  # also a wrapper left empty by a failed add
            original = module.base_layer if isinstance(module, LoraLayer) else module.original_module
            set_module(model, path, original)


def _strip_half_added(layer: LoraLayer, name: str) -> None:
    """Remove what a ``LoraLayer.add_adapter`` that raised part-way left (its rank recorded, not its scaling)."""
    layer._remove(name)
    layer.r.pop(name, None)
    layer.active_adapters = [a for a in layer.active_adapters if a != name]


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove an adapter (unmerging it first if merged); modules left with no adapter become the original
    modules again."""
    adapter_config(model, name)
    _remove_from_layers(model, name)
    configs = dict(adapter_configs(model))
    del configs[name]
    setattr(model, _CONFIGS, configs)
    set_active_adapters(model, [a for a in active_adapters(model) if a != name])


# --- which adapters act -------------------------------------------------------------------------------
def set_active_adapters(model: nn.Module, names: str | list[str]) -> None:
    """Make exactly ``names`` act in forward passes (their updates add up); ``[]`` runs the base model."""
    names = [names] if isinstance(names, str) else list(names)
    for n in names:
        adapter_config(model, n)
    if any(m.merged_adapters for _, m in lora_layers(model)):
        merged = sorted({a for _, m in lora_layers(model) for a in m.merged_adapters})
        if set(merged) - set(names):
            raise RuntimeError(f"adapters {merged} are merged into the weights: unmerge before deactivating")
    setattr(model, _ACTIVE, names)
    for module in wrappers(model):
        module.set_active(names)


def activate_adapter(model: nn.Module, name: str) -> None:
    """Add ``name`` to the active adapters."""
    current = active_adapters(model)
    set_active_adapters(model, [*current, name] if name not in current else current)


def deactivate_adapter(model: nn.Module, name: str) -> None:
    adapter_config(model, name)
    set_active_adapters(model, [a for a in active_adapters(model) if a != name])


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run the bare base model inside the block: merged adapters are taken out and put back after."""
    merged = {id(layer): list(layer.merged_adapters) for _, layer in lora_layers(model)}
    saved = [(module, module.disabled) for module in wrappers(model)]  # restore, so blocks can nest
    for _, layer in lora_layers(model):
        layer.unmerge()
    for module, _ in saved:
        module.disabled = True
    try:
        yield model
    finally:
        for module, was_disabled in saved:
            module.disabled = was_disabled
        for _, layer in lora_layers(model):
            layer.merge(merged.get(id(layer), []))


def set_trainable(model: nn.Module, name: str) -> None:
    """Freeze everything except adapter ``name``: its A/B, its copies of ``modules_to_save`` and the
    biases its config asks for (``bias='all'``: every bias; ``'lora_only'``: those of its LoRA layers)."""
    config = adapter_config(model, name)
    for p in model.parameters():
        p.requires_grad_(False)
    _set_adapter_grad(model, name, True)
    for _, p in trainable_biases(model, name, config):
        p.requires_grad_(True)


def trainable_biases(model: nn.Module, name: str, config: LoraConfig) -> list[tuple[str, nn.Parameter]]:
    """Biases trained and saved with adapter ``name``, by their path in the model."""
    if config.bias == "none":
        return []
    if config.bias == "lora_only":
        return [(f"{path}.base_layer.bias", layer.base_layer.bias) for path, layer in lora_layers(model)
                if name in layer.adapter_names and getattr(layer.base_layer, "bias", None) is not None]
    skip = [f"{p}.original_module." for p, _ in saved_modules(model)]
    skip += [f"{p}.modules_to_save." for p, _ in saved_modules(model)]
    return [(n, p) for n, p in model.named_parameters()
            if n.rsplit(".", 1)[-1] == "bias" and not any(n.startswith(s) for s in skip)]


# --- merging ------------------------------------------------------------------------------------------
def merge_adapters(model: nn.Module, names: list[str] | None = None) -> None:
    """Fold adapters (default: the active ones) into the base weights, so inference costs nothing extra.
    Exact up to float rounding; ``unmerge_adapters`` undoes it."""
    names = active_adapters(model) if names is None else names
    for n in names:
        adapter_config(model, n)
    inactive = set(names) - set(active_adapters(model))
    if inactive:
        raise RuntimeError(f"adapters {sorted(inactive)} are not active: activate them before merging")
    _refuse_quantized_merges(model, names)
    _refuse_tied_merges(model, names)
    for _, layer in lora_layers(model):
        layer.merge(names)


def _refuse_quantized_merges(model: nn.Module, names: list[str]) -> None:
    """A quantized base (``lorakit.quant``) cannot take a merge: requantizing the merged weight would add a
    new rounding error on top of the update. Refused before any layer changes."""
    for path, layer in lora_layers(model):
        mode = quant_mode_of(layer.base_layer)
        if mode is not None and set(names) & set(layer.adapter_names):
            raise RuntimeError(f"cannot merge into {path}: its base weight is quantized ({mode}), and rounding "
                               "the merged weight again would add its error to the update; keep the adapter "
                               "unmerged (same outputs), or load the base unquantized to merge")


def _refuse_tied_merges(model: nn.Module, names: list[str]) -> None:
    """A weight shared with another module (GPT-2's ``wte`` is also its ``lm_head``) cannot take a merge:
    the update would reach the other module too and the outputs would change."""
    users: dict[int, list[str]] = {}
    for path, param in model.named_parameters(remove_duplicate=False):
        users.setdefault(id(param), []).append(path)
    for path, layer in lora_layers(model):
        if not set(names) & set(layer.adapter_names):
            continue  # nothing to merge here (nor a quantized base: _refuse_quantized_merges ran first)
        shared = users.get(id(layer.base_layer.weight), [])
        if len(shared) > 1:
            raise RuntimeError(f"cannot merge into {path}: its weight is shared with {shared}, so merging "
                               "would change those modules too; keep this adapter unmerged")


def unmerge_adapters(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unmerge()


def merged_adapters(model: nn.Module) -> list[str]:
    return sorted({a for _, layer in lora_layers(model) for a in layer.merged_adapters})


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapters and return the plain model (original module classes, no LoRA left);
    ``modules_to_save`` become the active adapter's copy."""
    kept = {id(w): w.current for _, w in saved_modules(model)}  # raises before anything changes
    merge_adapters(model)
    return _strip(model, keep=lambda wrapper: kept[id(wrapper)])


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter without merging: the base model as it was loaded."""
    unmerge_adapters(model)
    return _strip(model, keep=lambda wrapper: wrapper.original_module)


def _strip(model: nn.Module, keep) -> nn.Module:
    """Swap every LoRA layer for its base layer and every saved-module wrapper for ``keep(wrapper)``."""
    for path, layer in list(lora_layers(model)):
        set_module(model, path, layer.base_layer)
    for path, wrapper in list(saved_modules(model)):
        set_module(model, path, keep(wrapper))
    _forget_adapters(model)
    return model


def _forget_adapters(model: nn.Module) -> None:
    for attr in (_CONFIGS, _ACTIVE):
        if hasattr(model, attr):
            delattr(model, attr)


@torch.no_grad()
def max_weight_change(model: nn.Module, reference: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between the model's base weights and a saved copy (keys as in
    ``base_state_dict``); used to check that unmerging restores the base."""
    current = base_state_dict(model)
    return max((current[k].float() - v.float()).abs().max().item() for k, v in reference.items())


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's parameters under their original names (``base_layer.`` and saved-module wrappers
    taken out of the path), detached copies."""
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        out[key.replace(".base_layer.", ".").replace(".original_module.", ".")] = value.detach().clone()
    return out
