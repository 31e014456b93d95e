"""Adapters attached to the served model: at most ``max_loaded``, least recently used leaves first.

Only the engine thread touches this (attaching changes what the model computes, which must not happen
during a forward pass). Adapters go straight from their file's tensors into the per-row routing's banks
(``lorakit.lora.routing``): no LoRA modules are created, so attaching one takes about a millisecond. They
are routed under internal slot names, so a public name never reaches the model's module tree; an adapter
in use by a running row is never evicted.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from ..adapters.io import WEIGHTS_NAME, check_model_type
from ..lora.model import candidate_modules
from ..lora.routing import RowRouting, attach_routed, detach_routed, plan_routed_adapter, set_row_routing
from ..lora.state import AdapterMismatchError
from .registry import AdapterRefused, ReadAdapter


class PoolFull(RuntimeError):
    """Every attached adapter is in use by a running row; the new one has to wait."""


@dataclass
class Slot:
    name: str  # public
    slot: str  # inside the routing
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
        self.slots: OrderedDict[str, Slot] = OrderedDict()  # least recently used first
        self.routing = set_row_routing(model, RowRouting())
        self._ids = itertools.count()
        self._modules: list[tuple[str, nn.Module]] | None = None  # module paths, until modules get wrapped
        self.loads = 0
        self.evictions = 0

    def __contains__(self, name: str) -> bool:
        return name in self.slots

    def slot_of(self, name: str | None) -> str | None:
        return None if name is None else self.slots[name].slot

    def use(self, name: str | None) -> None:
        if name is not None:
            self.slots[name].refs += 1
            self.slots.move_to_end(name)

    def release(self, name: str | None) -> None:
        if name is not None and name in self.slots:
            self.slots[name].refs -= 1

    def attach(self, adapter: ReadAdapter) -> Slot:
        """Put ``adapter`` into the model (evicting the least recently used idle one if full). Raises
        ``PoolFull`` when all are busy, ``AdapterRefused`` when it does not fit this base (checked before
        anything changes: the model and the other adapters stay exactly as they were)."""
        if adapter.name in self.slots:
            return self.slots[adapter.name]
        idle = None
        if len(self.slots) >= self.max_loaded:  # checked first: cheap, and a full pool is retried often
            idle = next((n for n, s in self.slots.items() if s.refs == 0), None)
            if idle is None:
                raise PoolFull(f"all {self.max_loaded} loaded adapters are in use")
        if self._modules is None:
            self._modules = list(candidate_modules(self.model))
        source = str(adapter.folder / WEIGHTS_NAME)
        try:
            check_model_type(self.model, adapter.meta, source)
            plan = plan_routed_adapter(self.model, adapter.config, adapter.tensors, source=source,
                                       candidates=self._modules, head_size_from_file=self.resize_heads)
        except (AdapterMismatchError, ValueError, TypeError) as err:
            raise AdapterRefused(f"adapter {adapter.name!r} does not fit the served base model: {err}") from err
        if idle is not None:  # only once the new adapter is known to fit
            self.detach(idle)
            self.evictions += 1
        slot = f"s{next(self._ids)}"
        if attach_routed(self.model, self.routing, slot, plan):
            self._modules = None  # new wrappers: paths now lead to them
        entry = Slot(adapter.name, slot, adapter.labels, plan.head_width)
        self.slots[adapter.name] = entry
        self.loads += 1
        return entry

    def detach(self, name: str) -> None:
        """Remove adapter ``name`` from the model (its rows must be done)."""
        entry = self.slots.pop(name)
        detach_routed(self.model, self.routing, entry.slot)
