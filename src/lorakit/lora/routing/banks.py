"""Stacked factor storage: one bank per layer shape, holding every routed adapter's factors.

Why banks: a mixed batch needs, per layer, the factors of each row's adapter. Kept stacked by layer and
slot (a slot is an adapter's index in every bank; slot 0 stays all zeros for base rows), they are gathered
for a batch with one ``index_select`` per layer, and attaching an adapter is a few copies per bank however
many layers it touches. This is vLLM's ``lora_a_stacked``/``lora_b_stacked`` idea with plain torch tensors.
"""

from __future__ import annotations

import torch

from ..layers import LoraLayer


class FactorBank:
    """The factors of every routed adapter for all layers of one shape (e.g. every q_proj and o_proj),
    stacked: ``a`` is (layers, slots, r_max, in) and ``b`` (layers, slots, out, r_max), in an adapter
    file's own layouts (A: r x in, B: out x r) with the scaling folded into B, ranks zero-padded. Slot 0,
    and a slot's entries for layers its adapter does not touch, stay zero."""

    def __init__(self, dtype: torch.dtype, device: torch.device, in_dim: int, out_dim: int) -> None:
        self.positions: dict[LoraLayer, int] = {}
        self.size = 0  # positions handed out (a forgotten layer's stays unused)
        self.a = torch.zeros(0, 1, 0, in_dim, dtype=dtype, device=device)
        self.b = torch.zeros(0, 1, out_dim, 0, dtype=dtype, device=device)

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
        """Zero ``slot`` everywhere (its adapter left; the next one may reuse it)."""
        if slot < self.a.shape[1]:
            self.a[:, slot].zero_()
            self.b[:, slot].zero_()
