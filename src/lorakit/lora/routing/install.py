"""Installing a ``RowRouting`` into a model: every LoRA layer and saved-module wrapper gets it.

Why apart from ``rows``: this is the part that touches the model's module tree (and refuses merged
weights), while ``RowRouting`` itself only knows layers it was handed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from ..model import merged_adapters, wrappers
from .rows import RowRouting


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
