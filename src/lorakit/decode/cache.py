"""A ``DynamicCache`` whose layers grow in place, and the row operations decoding needs on it.

Why: ``DynamicLayer.update`` concatenates (copies) the whole cache at every step, and beam search then
copies it again to reorder the beams; with 10 beams x 16 inputs that is ~1 GB of copying per step on
SmolLM2. ``GrowingLayer`` keeps spare room at the end of each buffer (one write per step), can reorder just
the generated part (the prompt part is the same for all beams of an input), merge new rows in (refilling
a batch as rows finish) and drop padding columns no live row needs. Layers of other kinds (sliding window,
linear attention) keep transformers' own behaviour; ``growable`` tells the caller which case it is in.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _dynamic_layer_class() -> type | None:
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers before per-layer caches
        return None
    return DynamicLayer


_DynamicLayer = _dynamic_layer_class()

if _DynamicLayer is not None:

    class GrowingLayer(_DynamicLayer):
        """A ``DynamicLayer`` over buffers with room for ``headroom`` more tokens; ``keys``/``values`` are views
        of the filled part, so model code and mask creation see an ordinary dynamic layer."""

        def __init__(self, headroom: int = 64) -> None:
            super().__init__()
            self.headroom = max(1, headroom)
            self.length = 0
            self.key_store: torch.Tensor | None = None
            self.value_store: torch.Tensor | None = None

        def _publish(self) -> None:
            self.keys = self.key_store[:, :, :self.length]
            self.values = self.value_store[:, :, :self.length]

        def _reserve(self, rows: int, like: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
            shape = (rows, like.shape[1], capacity, like.shape[3])
            return (torch.empty(shape, dtype=like.dtype, device=like.device),
                    torch.empty(shape, dtype=like.dtype, device=like.device))

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            new = key_states.shape[-2]
            if self.key_store is None or self.length + new > self.key_store.shape[2]:
                keys, values = self._reserve(key_states.shape[0], key_states, self.length + new + self.headroom)
                if self.length:
                    keys[:, :, :self.length] = self.key_store[:, :, :self.length]
                    values[:, :, :self.length] = self.value_store[:, :, :self.length]
                self.key_store, self.value_store = keys, values
            self.key_store[:, :, self.length:self.length + new] = key_states
            self.value_store[:, :, self.length:self.length + new] = value_states
            self.length += new
            self._publish()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def _select(self, rows: torch.Tensor) -> None:
            if self.key_store is not None:
                self.key_store = self.key_store.index_select(0, rows.to(self.key_store.device))
                self.value_store = self.value_store.index_select(0, rows.to(self.value_store.device))
                self._publish()

        reorder_cache = batch_select_indices = _select

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.key_store is not None:
                self.key_store = self.key_store.repeat_interleave(repeats, dim=0)
                self.value_store = self.value_store.repeat_interleave(repeats, dim=0)
                self._publish()

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError("crop takes a negative number of tokens to remove")
            self.length = max(0, self.length + tokens_to_remove)
            if self.key_store is not None:
                self._publish()

        # --- lorakit's own operations ---------------------------------------------------------------------
        def reorder_tail(self, rows: torch.Tensor, start: int) -> None:
            """Reorder rows from position ``start`` on only: the caller guarantees positions before it are
            equal in every row it maps onto each other (the shared prompt of an input's beams)."""
            if self.key_store is not None and start < self.length:
                rows = rows.to(self.key_store.device)
                moved = (rows != torch.arange(len(rows), device=rows.device)).nonzero()[:, 0]
                if len(moved) == 0:
                    return
                source = rows[moved]  # the right-hand side is gathered (copied) before anything is written
                self.key_store[moved, :, start:self.length] = self.key_store[source, :, start:self.length]
                self.value_store[moved, :, start:self.length] = self.value_store[source, :, start:self.length]

        def drop_front(self, columns: int) -> None:
            """Forget the first ``columns`` positions (padding no live row attends to); a view, no copy."""
            if self.key_store is not None and columns > 0:
                self.key_store = self.key_store[:, :, columns:]
                self.value_store = self.value_store[:, :, columns:]
                self.length -= columns
                self._publish()

        def stack(self, other: GrowingLayer) -> None:
            """Append ``other``'s rows below this layer's, both right-aligned to the longer one (the shorter
            is left-padded with zeros, which the attention mask hides)."""
            if other.key_store is None:
                return
            if self.key_store is None:
                self.key_store, self.value_store, self.length = other.key_store, other.value_store, other.length
                self.is_initialized, self.device = True, other.device
                self._publish()
                return
            width = max(self.length, other.length)
            ours, theirs = self.key_store.shape[0], other.key_store.shape[0]
            keys, values = self._reserve(ours + theirs, self.key_store, width + self.headroom)
            for store, source in ((keys, self.key_store), (values, self.value_store)):
                store[:ours, :, :width - self.length].zero_()
                store[:ours, :, width - self.length:width] = source[:, :, :self.length]
            for store, source in ((keys, other.key_store), (values, other.value_store)):
                store[ours:, :, :width - other.length].zero_()
                store[ours:, :, width - other.length:width] = source[:, :, :other.length]
            self.key_store, self.value_store, self.length = keys, values, width
            self._publish()
else:  # pragma: no cover - old transformers
    GrowingLayer = None  # type: ignore[assignment,misc]


def new_cache(model: nn.Module, headroom: int = 64) -> Any:
    """An empty ``DynamicCache`` for ``model`` whose plain layers are ``GrowingLayer``s (others untouched)."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # transformers before the config argument
        return DynamicCache()
    layers = getattr(cache, "layers", None)
    if GrowingLayer is None or not layers:
        return cache
    cache.layers = [GrowingLayer(headroom) if type(layer) is _DynamicLayer else layer for layer in layers]
    return cache


def growable(cache: Any) -> bool:
    """Whether every layer is a ``GrowingLayer``, so the in-place operations below apply."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and GrowingLayer is not None and all(isinstance(layer, GrowingLayer) for layer in layers)


def select_rows(cache: Any, rows: torch.Tensor) -> None:
    """Keep, reorder or repeat the cache's batch rows: dropping finished rows, moving beams."""
    cache.reorder_cache(rows)


def reorder_tail(cache: Any, rows: torch.Tensor, start: int) -> None:
    """Beam reordering that copies only positions ``start`` onwards when the cache allows it."""
    if growable(cache):
        for layer in cache.layers:
            layer.reorder_tail(rows, start)
    else:
        cache.reorder_cache(rows)


def drop_front(cache: Any, columns: int) -> None:
    for layer in cache.layers:
        layer.drop_front(columns)


def stack(cache: Any, other: Any) -> None:
    """Append ``other``'s rows to ``cache`` (both growable), right-aligned."""
    for mine, theirs in zip(cache.layers, other.layers, strict=True):
        mine.stack(theirs)
