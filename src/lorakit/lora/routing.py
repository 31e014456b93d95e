"""Per-row adapters: one forward pass serves rows that each use their own adapter (or the bare base).

Why: a server holds one base model and many adapters; running each adapter's requests separately, or
merging weights, would serialise them. Here the factors of every routed adapter sit in *banks*, one per
layer shape, stacked by layer and slot (ranks zero-padded, scaling folded into B, slot 0 all zeros for
base rows). A batch composition gathers each layer's factors for its rows once; each forward then costs
two batched matmuls per layer, the second adding into the base output in place. No Python loop over
adapters, no merged weights (the idea of S-LoRA and Punica, on CPU or GPU with plain torch ops).

Adapters enter a bank two ways: the model's own adapters (``set_row_routing`` / ``route_rows`` copy
them in), or straight from an adapter file's tensors (``plan_routed_adapter`` + ``attach_routed``), which
creates no LoRA modules at all and so attaches an adapter in a millisecond or two: what the server uses.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoraConfig, RegexBudget
from .layers import Embedding, LoraLayer, ModulesToSave, lora_scaling
from .model import (
    adapter_names,
    candidate_modules,
    lora_layers,
    make_layer,
    match_modules,
    merged_adapters,
    set_module,
    wrappers,
)
from .state import (
    AdapterMismatchError,
    check_adapter_tensors,
    head_outputs_in_file,
    lora_factor_shapes,
    peft_key,
    resized_head,
)


class _Bank:
    """The factors of every routed adapter for all layers of one shape (e.g. every q_proj and o_proj),
    stacked: ``a`` is (layers, slots, r_max, in) and ``b`` (layers, slots, out, r_max), in an adapter
    file's own layouts (A: r x in, B: out x r) with the scaling folded into B. Attaching an adapter is then
    a few copies per bank, however many layers it touches. Slot 0, and a slot's entries for layers its
    adapter does not touch, stay zero."""

    def __init__(self, like: torch.Tensor, in_dim: int, out_dim: int) -> None:
        self.positions: dict[LoraLayer, int] = {}
        self.size = 0  # positions handed out (a forgotten layer's stays unused)
        self.a = like.new_zeros(0, 1, 0, in_dim)
        self.b = like.new_zeros(0, 1, out_dim, 0)

    def _grow(self, layers: int, slots: int, rank: int) -> None:
        old_l, old_s, old_r = self.a.shape[:3]
        if layers <= old_l and slots <= old_s and rank <= old_r:
            return
        new_s = max(slots, 2 * old_s) if slots > old_s else old_s  # doubling: attaching stays cheap on average
        new_l, new_r = max(layers, old_l), max(rank, old_r)
        a = self.a.new_zeros(new_l, new_s, new_r, self.a.shape[3])
        b = self.b.new_zeros(new_l, new_s, self.b.shape[2], new_r)
        a[:old_l, :old_s, :old_r] = self.a
        b[:old_l, :old_s, :, :old_r] = self.b
        self.a, self.b = a, b

    def put(self, slot: int, layers: list[LoraLayer], a: torch.Tensor, b: torch.Tensor) -> bool:
        """Store stacked ``a`` (n, r, in) and scaled ``b`` (n, out, r) of ``layers`` in ``slot``; returns
        whether the bank was reallocated (views into the old one are then stale)."""
        new = [layer for layer in dict.fromkeys(layers) if layer not in self.positions]
        r = a.shape[1]
        before = self.a
        self._grow(self.size + len(new), slot + 1, r)  # first: if it fails, nothing has changed
        for layer in new:
            self.positions[layer] = self.size
            self.size += 1
        index = torch.tensor([self.positions[layer] for layer in layers], device=self.a.device)
        self.a[:, slot, :r].index_copy_(0, index, a.to(self.a.dtype))
        self.b[:, slot, :, :r].index_copy_(0, index, b.to(self.b.dtype))
        return self.a is not before

    def views(self, layer: LoraLayer, slot: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A: r x in, B: out x r) of ``slot`` in ``layer``: views, no copy."""
        pos = self.positions[layer]
        return self.a[pos, slot, :r], self.b[pos, slot, :, :r]

    def clear(self, slot: int) -> None:
        if slot < self.a.shape[1]:
            self.a[:, slot].zero_()
            self.b[:, slot].zero_()


Factors = tuple[torch.Tensor, torch.Tensor, float]  # A (r x in), B (out x r), scaling


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
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._next_slot = itertools.count(1)
        self._banks: dict[tuple, _Bank] = {}
        self._bank_of: dict[LoraLayer, _Bank] = {}
        # layer -> {slot: (A, B) as views into its bank} for the adapters touching it (rank: A's rows)
        self._factors: dict[LoraLayer, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._one_slot: int | None = None  # the slot of every row, when they all use one adapter
        self._from_model: set[str] = set()
        self._row_slots: tuple[int, ...] = ()
        self._entries: dict[LoraLayer, object] = {}
        self._compositions: dict[tuple[int, ...], dict[LoraLayer, object]] = {}
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
        groups: dict[tuple, list[tuple[LoraLayer, Factors]]] = {}
        for layer, (a, b, scaling) in factors.items():
            key = (isinstance(layer, Embedding), a.shape[1], b.shape[0], a.shape[0])  # stackable: same shapes
            groups.setdefault(key, []).append((layer, (a, b, scaling)))
        try:
            for (embedding, in_dim, out_dim, _), items in groups.items():
                bank_key = (embedding, in_dim, out_dim)
                bank = self._banks.get(bank_key)
                if bank is None:
                    bank = self._banks[bank_key] = _Bank(items[0][0].base_layer.weight, in_dim, out_dim)
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

    # --- forward
    def _check_rows(self, layer: nn.Module, batch: int) -> None:
        if batch != len(self.rows):
            raise ValueError(f"{type(layer).__name__}: the input has {batch} rows but the routing names "
                             f"{len(self.rows)} adapters; route exactly one adapter (or None) per row")

    def _prepare(self, layer: LoraLayer) -> tuple | None:
        if self._one_slot is not None:  # every row on one adapter: its own factors, kept as views
            views = self._factors.get(layer, {}).get(self._one_slot)
            return None if views is None else ("one", *views)
        factors = self._factors.get(layer)
        used = {s for s in self._row_slots if s in factors} if factors else None
        if not used:
            return None
        bank = self._bank_of[layer]
        pos, r = bank.positions[layer], max(factors[s][0].shape[0] for s in used)
        # rows on the base or on an adapter that does not touch this layer read zeros (slot 0)
        index = torch.tensor([s if s in used else 0 for s in self._row_slots], device=bank.a.device)
        b = bank.b[pos, :, :, :r].index_select(0, index)
        if isinstance(layer, Embedding):  # tables are looked up per row, never copied per row
            return "rows", (bank.a[pos, :, :r], index), b
        return "rows", bank.a[pos, :, :r].index_select(0, index), b

    def add_delta(self, layer: LoraLayer, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` (the base layer's output) plus each row's LoRA update; in place when no gradient is
        recorded, which saves writing and reading a second activation-sized tensor per layer."""
        self._check_rows(layer, x.shape[0])
        if layer not in self._entries:
            self._entries[layer] = self._prepare(layer)
        entry = self._entries[layer]
        if entry is None:
            return result
        kind, a, b = entry
        if isinstance(layer, Embedding):
            if kind == "one":  # a: (r, num_embeddings), b: (dim, r)
                delta = F.embedding(x, a.T) @ b.T
            else:  # a: ((slots, r, num_embeddings), row slots), b: (rows, dim, r)
                table, index = a
                looked_up = table[index.view(-1, *[1] * (x.dim() - 1)), :, x]  # (rows, ..., r)
                flat = looked_up.reshape(x.shape[0], -1, looked_up.shape[-1])
                delta = torch.bmm(flat, b.transpose(1, 2))
            return result + delta.reshape(result.shape).to(result.dtype)
        h = x if x.dtype == b.dtype else x.to(b.dtype)
        in_place = not torch.is_grad_enabled() and result.dtype == b.dtype and result.is_contiguous()
        if kind == "one":  # a: (r, in), b: (out, r)
            h2 = h.reshape(-1, h.shape[-1])
            if in_place:
                result.view(-1, result.shape[-1]).addmm_(h2 @ a.T, b.T)
                return result
            return result + ((h2 @ a.T) @ b.T).reshape(result.shape).to(result.dtype)
        flat = h.reshape(h.shape[0], -1, h.shape[-1])  # a: (rows, r, in), b: (rows, out, r)
        if in_place:
            result.view(result.shape[0], -1, result.shape[-1]).baddbmm_(torch.bmm(flat, a.transpose(1, 2)),
                                                                        b.transpose(1, 2))
            return result
        delta = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2))
        return result + delta.reshape(result.shape).to(result.dtype)

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


# --- installing a routing into a model ------------------------------------------------------------------
def set_row_routing(model: nn.Module, routing: RowRouting | None) -> RowRouting | None:
    """Give every LoRA layer and saved-module wrapper ``routing`` (``None`` takes it away) and copy the
    model's adapters into it: while its ``rows`` are set, row ``i`` of a batch runs through adapter
    ``rows[i]`` alone (``None``: the base model), whatever adapters are active. Install again after
    adding, deleting or training the model's adapters (new layers do not have it)."""
    if routing is not None:
        merged = merged_adapters(model)
        if merged:
            raise RuntimeError(f"adapters {merged} are merged into the weights; per-row routing needs the bare "
                               "base weights: unmerge first")
    for module in wrappers(model):
        module.routing = routing
    if routing is not None:
        routing.sync(model)
    return routing


@contextmanager
def route_rows(model: nn.Module, rows: Sequence[str | None]) -> Iterator[RowRouting]:
    """Inside the block, row ``i`` of every batch uses adapter ``rows[i]`` (``None``: no adapter): a batch
    of requests for different adapters (and the base) runs in one forward pass."""
    routing = set_row_routing(model, RowRouting())
    try:
        routing.set_rows(rows)
        yield routing
    finally:
        set_row_routing(model, None)


# --- adapters attached straight from their tensors -----------------------------------------------------
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
