"""Adapters attached to the served model: at most ``max_loaded``, least recently used leaves first.

Only the engine thread touches this (attaching changes the model's modules, which must not happen during
a forward pass). Adapters are attached under internal slot names, so a public name never reaches the
model's module tree; an adapter in use by a running row is never evicted.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from ..lora.layers import RowRouting
from ..lora.model import add_adapter, delete_adapter, rollback_on_error, set_row_routing
from ..lora.state import AdapterMismatchError, load_adapter_state_dict
from .registry import AdapterRefused, ReadAdapter


class PoolFull(RuntimeError):
    """Every attached adapter is in use by a running row; the new one has to wait."""


@dataclass
class Slot:
    name: str  # public
    slot: str  # inside the model
    labels: list[str] | None
    refs: int = 0
    unload_requested: bool = False


class AdapterPool:
    """Attach, evict and count uses of adapters in ``model``; keeps ``routing`` installed on every layer."""

    def __init__(self, model: nn.Module, max_loaded: int) -> None:
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}")
        self.model = model
        self.max_loaded = max_loaded
        self.slots: OrderedDict[str, Slot] = OrderedDict()  # least recently used first
        self.routing = RowRouting()
        self._ids = itertools.count()
        self.loads = 0
        self.evictions = 0
        set_row_routing(model, self.routing)

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
        ``PoolFull`` when all are busy, ``AdapterRefused`` when it does not fit this base (the model is then
        exactly as before)."""
        if adapter.name in self.slots:
            return self.slots[adapter.name]
        if len(self.slots) >= self.max_loaded:
            idle = next((n for n, s in self.slots.items() if s.refs == 0), None)
            if idle is None:
                raise PoolFull(f"all {self.max_loaded} loaded adapters are in use")
            self.detach(idle)
            self.evictions += 1
        slot = f"s{next(self._ids)}"
        source = str(adapter.folder)
        model_type = getattr(getattr(self.model, "config", None), "model_type", None)
        saved_type = (adapter.meta or {}).get("model_type")
        if saved_type and model_type and saved_type != model_type:
            raise AdapterRefused(f"adapter {adapter.name!r} was made for a {saved_type!r} model, the served base is "
                                 f"{model_type!r}; refused")
        try:
            with rollback_on_error(self.model, slot):
                add_adapter(self.model, adapter.config, slot, activate=False)
                load_adapter_state_dict(self.model, adapter.tensors, slot, source=source)
        except (AdapterMismatchError, ValueError, TypeError) as err:
            set_row_routing(self.model, self.routing)
            raise AdapterRefused(f"adapter {adapter.name!r} does not fit the served base model: {err}") from err
        self.model.eval()
        set_row_routing(self.model, self.routing)  # new LoRA layers need it too
        entry = Slot(adapter.name, slot, adapter.labels)
        self.slots[adapter.name] = entry
        self.loads += 1
        return entry

    def detach(self, name: str) -> None:
        """Remove adapter ``name`` from the model (its rows must be done)."""
        entry = self.slots.pop(name)
        delete_adapter(self.model, entry.slot)
        set_row_routing(self.model, self.routing)
