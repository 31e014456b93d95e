"""The batched LoRA update of one layer for a batch whose rows use different adapters.

Why its own module: this is the hot path (vLLM's punica wrapper). A batch composition is gathered once
per layer into one of the entries below (``RowRouting`` caches them); every forward pass then costs two
batched matmuls per layer, the second adding into the base output in place when no gradient is recorded
(saving an activation-sized write and read per layer). No Python loop over adapters, no merged weights
(the idea of S-LoRA and Punica, on CPU or GPU with plain torch ops). Inference only: no dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _in_place(result: torch.Tensor, dtype: torch.dtype) -> bool:
    return not torch.is_grad_enabled() and result.dtype == dtype and result.is_contiguous()


@dataclass(frozen=True, slots=True)
class SingleAdapter:
    """Every row on one adapter: its factors, as views into its bank (switching to it copies nothing)."""

    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r), scaling folded in

    def add(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        a, b = self.a, self.b
        h = x if x.dtype == b.dtype else x.to(b.dtype)
        h2 = h.reshape(-1, h.shape[-1])
        if _in_place(result, b.dtype):
            result.view(-1, result.shape[-1]).addmm_(h2 @ a.T, b.T)
            return result
        return result + ((h2 @ a.T) @ b.T).reshape(result.shape).to(result.dtype)


@dataclass(frozen=True, slots=True)
class MixedRows:
    """Rows on different adapters: each row's factors gathered from the bank (base rows read zeros)."""

    a: torch.Tensor  # (rows, r, in)
    b: torch.Tensor  # (rows, out, r)

    def add(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        a, b = self.a, self.b
        h = x if x.dtype == b.dtype else x.to(b.dtype)
        flat = h.reshape(h.shape[0], -1, h.shape[-1])
        if _in_place(result, b.dtype):
            result.view(result.shape[0], -1, result.shape[-1]).baddbmm_(torch.bmm(flat, a.transpose(1, 2)),
                                                                        b.transpose(1, 2))
            return result
        delta = torch.bmm(torch.bmm(flat, a.transpose(1, 2)), b.transpose(1, 2))
        return result + delta.reshape(result.shape).to(result.dtype)


@dataclass(frozen=True, slots=True)
class SingleEmbedding:
    """Every row on one adapter of an embedding: A's columns are looked up, not multiplied."""

    a: torch.Tensor  # (r, num_embeddings)
    b: torch.Tensor  # (dim, r)

    def add(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        delta = F.embedding(x, self.a.T) @ self.b.T
        return result + delta.reshape(result.shape).to(result.dtype)


@dataclass(frozen=True, slots=True)
class MixedEmbeddingRows:
    """Rows on different adapters of an embedding: tables stay in the bank and are looked up per row
    (a table per row would copy num_embeddings x r floats per row)."""

    table: torch.Tensor  # (slots, r, num_embeddings)
    index: torch.Tensor  # (rows,): each row's slot
    b: torch.Tensor  # (rows, dim, r)

    def add(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        looked_up = self.table[self.index.view(-1, *[1] * (x.dim() - 1)), :, x]  # (rows, ..., r)
        flat = looked_up.reshape(x.shape[0], -1, looked_up.shape[-1])
        delta = torch.bmm(flat, self.b.transpose(1, 2))
        return result + delta.reshape(result.shape).to(result.dtype)


# one layer's gathered factors for the current rows; ``None`` in a cache: no row's adapter touches the layer
Entry = SingleAdapter | MixedRows | SingleEmbedding | MixedEmbeddingRows
