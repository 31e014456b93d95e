"""Per-row adapters: one forward pass serves rows that each use their own adapter (or the bare base).

Split along vLLM's ``lora/`` lines:

- ``banks``: stacked factor storage, one bank per layer shape, indexed by layer and slot (an adapter's
  index in every bank; slot 0 is the zeros of base rows);
- ``compute``: a layer's gathered factors for a batch composition (typed entries) and the batched update;
- ``rows``: ``RowRouting``, which adapter each row uses, slots, the composition cache, the layers' calls;
- ``install``: giving a model's layers a routing (``set_row_routing``, ``route_rows``);
- ``plan``: adapters attached straight from a file's tensors, with no LoRA modules created (the server).

Adapters enter a bank two ways: the model's own adapters (``set_row_routing`` / ``route_rows`` copy them
in), or from an adapter file (``plan_routed_adapter`` + ``attach_routed``).
"""

from .banks import FactorBank
from .compute import Entry, MixedEmbeddingRows, MixedRows, SingleAdapter, SingleEmbedding
from .install import route_rows, set_row_routing
from .plan import RoutedAdapter, attach_routed, detach_routed, plan_routed_adapter
from .rows import Factors, RowRouting

__all__ = [
    "Entry", "FactorBank", "Factors", "MixedEmbeddingRows", "MixedRows", "RoutedAdapter", "RowRouting",
    "SingleAdapter", "SingleEmbedding", "attach_routed", "detach_routed", "plan_routed_adapter", "route_rows",
    "set_row_routing",
]
