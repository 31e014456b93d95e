"""``RowRouting``: which adapter each row of a batch uses, and where every routed adapter's factors live.

Why: a server holds one base model and many adapters; running each adapter's requests separately, or
merging weights, would serialise them. This is the manager half of per-row routing (vLLM's LoRA model
manager): it hands each adapter a slot in the banks (``banks``), remembers a few batch compositions'
gathered factors, and answers the layers' calls (``add_delta``, ``saved_forward``; the ``RowUpdate``
protocol that ``lora.layers`` owns) with the batched update of ``compute``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from ..layers import Embedding, LoraLayer, ModulesToSave, weight_spec
from ..model import adapter_names, lora_layers
from .banks import FactorBank
from .compute import Entry, MixedEmbeddingRows, MixedRows, SingleAdapter, SingleEmbedding

Factors = tuple[torch.Tensor, torch.Tensor, float]  # A (r x in), B (out x r), scaling
BankKey = tuple[bool, int, int]  # (embedding, in, out): layers whose factors stack


class RowRouting:
    """Which adapter each row of a batch uses (``None``: the bare base model), and every routed adapter's
    factors, layer by layer.

    ``set_rows`` names one adapter per row for the next forward passes. The factors a batch composition
    needs are gathered once and reused until the rows change (a server alternates between a prefill's rows
    and the running batch's, so a few compositions are remembered). Only the per-adapter copies of
    ``modules_to_save`` (classification heads) run once per adapter present, each on its own rows.
    Inference only: dropout is not applied.
    """

    keep_compositions = 4

    def __init__(self, rows: Sequence[str | None] | None = None) -> None:
        self.rows: tuple[str | None, ...] | None = None
        self._slots: dict[str, int] = {}  # adapter name -> its slot (index in every bank)
        self._free: list[int] = []
        self._next_slot = itertools.count(1)
        self._banks: dict[BankKey, FactorBank] = {}
        self._bank_of: dict[LoraLayer, FactorBank] = {}
        # layer -> {slot: (A, B) as views into its bank} for the adapters touching it (rank: A's rows)
        self._factors: dict[LoraLayer, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._one_slot: int | None = None  # the slot of every row, when they all use one adapter
        self._from_model: set[str] = set()
        self._row_slots: tuple[int, ...] = ()
        self._entries: dict[LoraLayer, Entry | None] = {}  # the current composition's, filled on first use
        self._compositions: dict[tuple[int, ...], dict[LoraLayer, Entry | None]] = {}
        if rows is not None:
            self.set_rows(rows)

    @property
    def names(self) -> list[str]:
        """The adapters rows can be routed to."""
        return list(self._slots)

    # --- which adapters exist
    @torch.no_grad()
    def attach(self, name: str, factors: dict[LoraLayer, Factors]) -> None:
        """Make adapter ``name`` routable, given its factors per layer."""
        if name in self._slots:
            raise ValueError(f"an adapter named {name!r} is already routed")
        slot = self._free.pop() if self._free else next(self._next_slot)
        groups: dict[tuple[bool, int, int, int], list[tuple[LoraLayer, Factors]]] = {}
        for layer, (a, b, scaling) in factors.items():
            key = (isinstance(layer, Embedding), a.shape[1], b.shape[0], a.shape[0])  # stackable: same shapes
            groups.setdefault(key, []).append((layer, (a, b, scaling)))
        try:
            for (embedding, in_dim, out_dim, _), items in groups.items():
                bank_key = (embedding, in_dim, out_dim)
                bank = self._banks.get(bank_key)
                if bank is None:
                    bank = self._banks[bank_key] = FactorBank(*weight_spec(items[0][0].base_layer), in_dim, out_dim)
                layers = [layer for layer, _ in items]
                a = torch.stack([f[0] for _, f in items])
                scales = torch.tensor([f[2] for _, f in items], dtype=a.dtype, device=a.device)
                b = torch.stack([f[1] for _, f in items]) * scales[:, None, None]
                if bank.put(slot, layers, a, b):  # reallocated: views into the old bank are stale
                    for layer, views in self._factors.items():
                        if self._bank_of[layer] is bank:
                            views.update({s: bank.views(layer, s, v[0].shape[0]) for s, v in views.items()})
                for layer in layers:  # views: switching to an adapter costs no op
                    self._bank_of[layer] = bank
                    self._factors.setdefault(layer, {})[slot] = bank.views(layer, slot, a.shape[1])
        except BaseException:  # leave the routing as it was
            self._clear_slot(slot)
            self._forget_empty_layers()
            self._free.append(slot)
            raise
        self._slots[name] = slot
        self._forget_compositions()

    def detach(self, name: str) -> None:
        """Take adapter ``name`` out of every bank (rows must no longer name it)."""
        slot = self._slots.pop(name)
        self._clear_slot(slot)
        self._free.append(slot)
        self._from_model.discard(name)
        self._forget_compositions()
        if self.rows is not None and name in self.rows:
            self.rows = None

    def _clear_slot(self, slot: int) -> None:
        for bank in self._banks.values():  # banks stay, even empty: the next adapter reuses them
            bank.clear(slot)
        for views in self._factors.values():
            views.pop(slot, None)

    def sync(self, model: nn.Module) -> None:
        """Copy the model's own adapters in again (after they were added, removed or trained); adapters
        attached from files stay."""
        rows = self.rows  # detaching below forgets rows that name the model's adapters
        for name in list(self._from_model):
            self.detach(name)
        self._forget_empty_layers()  # layers of deleted adapters may have left the model
        for name in adapter_names(model):
            self.attach(name, {layer: layer.row_factors(name) for _, layer in lora_layers(model) if name in layer.r})
            self._from_model.add(name)
        if rows is not None and all(r is None or r in self._slots for r in rows):
            self.set_rows(rows)  # rows naming a deleted adapter stay unset: the caller must route again

    def _forget_empty_layers(self) -> None:
        """Drop layers no routed adapter touches any more (their bank positions stay unused)."""
        for bank in self._banks.values():
            for layer in [layer for layer in bank.positions if not self._factors.get(layer)]:
                del bank.positions[layer]
        for layer in [layer for layer, views in self._factors.items() if not views]:
            del self._factors[layer]
            self._bank_of.pop(layer, None)

    # --- which rows use which adapter
    def set_rows(self, rows: Sequence[str | None] | None) -> None:
        """Route the next forward passes' rows; a composition seen recently keeps its gathered factors."""
        if rows is None:
            self.rows = None
            return
        rows = tuple(rows)
        unknown = sorted({r for r in rows if r is not None and r not in self._slots})
        if unknown:
            raise KeyError(f"no adapters named {unknown}; routable: {sorted(self._slots) or 'none'}")
        self.rows = rows
        self._row_slots = tuple(0 if r is None else self._slots[r] for r in rows)
        first = self._row_slots[0] if self._row_slots else 0
        self._one_slot = first if first and self._row_slots.count(first) == len(self._row_slots) else None
        entries = self._compositions.pop(self._row_slots, None)
        self._entries = entries if entries is not None else {}
        self._compositions[self._row_slots] = self._entries  # most recent last
        while len(self._compositions) > self.keep_compositions:
            del self._compositions[next(iter(self._compositions))]

    def prepare(self) -> None:
        """Gather the current rows' factors for every layer now rather than during the next forward pass
        (which would do it layer by layer on first use): lets a caller pay, or time, the switch up front."""
        for layer in self._factors:
            if layer not in self._entries:
                self._entries[layer] = self._prepare(layer)

    def _forget_compositions(self) -> None:
        self._compositions.clear()
        self._entries = {}
        if self.rows is not None:
            self._compositions[self._row_slots] = self._entries

    def _prepare(self, layer: LoraLayer) -> Entry | None:
        """``layer``'s factors for the current rows, or ``None`` when no row's adapter touches it."""
        embedding = isinstance(layer, Embedding)
        if self._one_slot is not None:  # every row on one adapter: its own factors, kept as views
            views = self._factors.get(layer, {}).get(self._one_slot)
            if views is None:
                return None
            return SingleEmbedding(*views) if embedding else SingleAdapter(*views)
        factors = self._factors.get(layer)
        used = {s for s in self._row_slots if s in factors} if factors else None
        if not used:
            return None
        bank = self._bank_of[layer]
        pos, r = bank.positions[layer], max(factors[s][0].shape[0] for s in used)
        # rows on the base or on an adapter that does not touch this layer read zeros (slot 0)
        index = torch.tensor([s if s in used else 0 for s in self._row_slots], device=bank.a.device)
        b = bank.b[pos, :, :, :r].index_select(0, index)
        if embedding:  # tables are looked up per row, never copied per row
            return MixedEmbeddingRows(bank.a[pos, :, :r], index, b)
        return MixedRows(bank.a[pos, :, :r].index_select(0, index), b)

    # --- forward (the ``RowUpdate`` protocol of ``lora.layers``)
    def _check_rows(self, layer: nn.Module, batch: int) -> None:
        if batch != len(self.rows):
            raise ValueError(f"{type(layer).__name__}: the input has {batch} rows but the routing names "
                             f"{len(self.rows)} adapters; route exactly one adapter (or None) per row")

    def add_delta(self, layer: LoraLayer, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` (the base layer's output) plus each row's LoRA update; in place when no gradient is
        recorded (see ``compute``)."""
        self._check_rows(layer, x.shape[0])
        if layer not in self._entries:
            self._entries[layer] = self._prepare(layer)
        entry = self._entries[layer]
        if entry is None:
            return result
        return entry.add(x, result)

    def saved_forward(self, wrapper: ModulesToSave, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Each row through its adapter's copy of the module (the original for base rows): one call per
        adapter present, outputs put back in row order. Heads of different widths (e.g. 1, 2 and 3 labels)
        share a batch: narrower rows are padded with NaN up to the widest."""
        self._check_rows(wrapper, x.shape[0])
        groups: dict[nn.Module, list[int]] = {}  # each row's copy (the original for base rows)
        for row, name in enumerate(self.rows):
            copies = wrapper.modules_to_save  # an nn.ModuleDict: no .get
            module = copies[name] if name in copies else wrapper.original_module  # noqa: SIM401
            groups.setdefault(module, []).append(row)
        if len(groups) == 1:
            (module,) = groups
            return module(x, *args, **kwargs)
        outputs = []
        for module, rows in groups.items():
            index = torch.tensor(rows, device=x.device)
            outputs.append((index, module(x.index_select(0, index), *args, **kwargs)))
        shapes = {tuple(y.shape[1:-1]) for _, y in outputs}
        if len(shapes) > 1:
            raise RuntimeError(f"adapters' copies of this module give outputs of shapes "
                               f"{sorted(list(y.shape[1:]) for _, y in outputs)}; they cannot share a batch")
        width = max(y.shape[-1] for _, y in outputs)
        first = outputs[0][1]
        out = first.new_full((x.shape[0], *first.shape[1:-1], width), float("nan"))
        for index, y in outputs:
            out[..., :y.shape[-1]].index_copy_(0, index, y)
        return out
