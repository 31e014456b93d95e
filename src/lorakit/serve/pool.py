"""Adapters attached to the served model: at most ``max_loaded``, least recently used leaves first.

Only the engine thread changes this (attaching changes what the model computes, which must not happen
during a forward pass); ``plan`` alone runs on the registry's loader threads, reading the model, so that
nothing that depends on an adapter file's contents runs on the engine thread. Adapters go straight from
their file's tensors into the per-row routing's banks (``lorakit.lora.routing``): no LoRA modules are
created, so attaching one takes about a millisecond. They are routed under internal names (``s0``, ``s1``,
...), so a public name never reaches the model's module tree; an adapter in use by a running row is never
evicted.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from ..adapters.io import WEIGHTS_NAME, check_model_type
from ..lora.layers import LoraLayer, ModulesToSave
from ..lora.model import candidate_modules
from ..lora.routing import (
    RoutedAdapter,
    RowRouting,
    attach_routed,
    detach_routed,
    plan_routed_adapter,
    set_row_routing,
)
from ..lora.state import AdapterFormatError, AdapterMismatchError
from .registry import AdapterRefused, ReadAdapter


class PoolFull(RuntimeError):
    """Every attached adapter is in use by a running row; the new one has to wait."""


@dataclass
class LoadedAdapter:
    """An adapter attached to the model: its names, labels and how many running rows use it."""

    name: str  # public
    routed: str  # its name inside the routing (never a public name)
    labels: list[str] | None
    width: int | None = None  # outputs of its classification head, when it brings one
    refs: int = 0
    unload_requested: bool = False


class AdapterPool:
    """Attach, evict and count uses of adapters in ``model``; keeps ``routing`` installed on every layer."""

    def __init__(self, model: nn.Module, max_loaded: int, resize_heads: bool = False) -> None:
        """``resize_heads``: an adapter's classification head may have its own number of labels (a
        classification base); a language model's head must keep the base's vocabulary."""
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}")
        self.model = model
        self.max_loaded = max_loaded
        self.resize_heads = resize_heads
        self.loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()  # least recently used first
        self.routing = set_row_routing(model, RowRouting())
        self._ids = itertools.count()
        self._modules: list[tuple[str, nn.Module]] | None = None  # module paths, until modules get wrapped
        self.loads = 0
        self.evictions = 0

    def __contains__(self, name: str) -> bool:
        return name in self.loaded

    def routed_name(self, name: str | None) -> str | None:
        """The name adapter ``name`` is routed under (``None``: the base), for ``routing.set_rows``."""
        return None if name is None else self.loaded[name].routed

    def use(self, name: str | None) -> None:
        if name is not None:
            self.loaded[name].refs += 1
            self.loaded.move_to_end(name)

    def release(self, name: str | None) -> None:
        if name is not None and name in self.loaded:
            self.loaded[name].refs -= 1

    def attach(self, adapter: ReadAdapter) -> LoadedAdapter:
        """Put ``adapter`` into the model (evicting the least recently used idle one if full). Raises
        ``PoolFull`` when all are busy, ``AdapterRefused`` when it does not fit this base (checked before
        anything changes: the model and the other adapters stay exactly as they were)."""
        if adapter.name in self.loaded:
            return self.loaded[adapter.name]
        idle = None
        if len(self.loaded) >= self.max_loaded:  # checked first: cheap, and a full pool is retried often
            idle = next((n for n, e in self.loaded.items() if e.refs == 0), None)
            if idle is None:
                raise PoolFull(f"all {self.max_loaded} loaded adapters are in use")
        plan = adapter.plan if isinstance(adapter.plan, RoutedAdapter) and self._rebind(adapter.plan) else None
        if plan is None:  # read without the loader threads' planning (tools, tests), or the model changed oddly
            if self._modules is None:
                self._modules = list(candidate_modules(self.model))
            plan = self._plan(adapter, self._modules)
        if idle is not None:  # only once the new adapter is known to fit
            self.detach(idle)
            self.evictions += 1
        routed = f"s{next(self._ids)}"
        if attach_routed(self.model, self.routing, routed, plan):
            self._modules = None  # new wrappers: paths now lead to them
        entry = LoadedAdapter(adapter.name, routed, adapter.labels, plan.head_width)
        self.loaded[adapter.name] = entry
        self.loads += 1
        return entry

    def plan(self, adapter: ReadAdapter) -> None:
        """Check ``adapter`` against the model and lay it out (``adapter.plan``) on the calling loader thread.

        Why here and not in ``attach``: matching target modules (regexes from the file), checking every
        tensor and copying it to the model's device depend on the file and may be slow or hostile; on the
        engine thread they would stall every request. ``attach`` then only brings the plan up to date with
        modules wrapped meanwhile (``_rebind``). Reads the model's module tree without changing it."""
        adapter.plan = self._plan(adapter, list(candidate_modules(self.model)))

    def _plan(self, adapter: ReadAdapter, candidates: list[tuple[str, nn.Module]]) -> RoutedAdapter:
        source = str(adapter.folder / WEIGHTS_NAME)
        try:
            check_model_type(self.model, adapter.meta, source)
            return plan_routed_adapter(self.model, adapter.config, adapter.tensors, source=source,
                                       candidates=candidates, head_size_from_file=self.resize_heads)
        except AdapterFormatError as err:  # the file itself is bad (non-finite tensors), whatever the model
            raise AdapterRefused(f"adapter {adapter.name!r} cannot be served: {err}") from err
        except (AdapterMismatchError, ValueError, TypeError) as err:
            raise AdapterRefused(f"adapter {adapter.name!r} does not fit the served base model: {err}") from err

    def _rebind(self, plan: RoutedAdapter) -> bool:
        """Bring a plan made on a loader thread up to date (on the engine thread, cheap: no matching): a
        target another adapter wrapped since is reused, as planning now would do. False when the model
        changed otherwise (a wrapper undone, a head's module changed): the caller plans again."""
        for path, planned in list(plan.layers.items()):
            try:
                current = self.model.get_submodule(path)
            except AttributeError:
                return False
            if current is planned:
                continue
            if path in plan.wrap and isinstance(current, LoraLayer) and current.base_layer is planned:
                plan.layers[path] = current
                del plan.wrap[path]
                continue
            return False
        for path, params in plan.heads.items():
            try:
                current = self.model.get_submodule(path)
            except AttributeError:
                return False
            original = current.original_module if isinstance(current, ModulesToSave) else current
            if {rel for rel, _ in original.named_parameters()} != set(params):
                return False
        return True

    def detach(self, name: str) -> None:
        """Remove adapter ``name`` from the model (its rows must be done)."""
        entry = self.loaded.pop(name)
        detach_routed(self.model, self.routing, entry.routed)
