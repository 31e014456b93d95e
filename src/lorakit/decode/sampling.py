"""Next tokens for a batch whose rows each have their own settings and random stream: the one sampler of
``lorakit generate``, the Python API and ``lorakit serve``.

Why one, per row: the same prompt, seed and settings then give the same text through any of them, and
requests from different clients can share a batch. A greedy row stays greedy (equal to running it alone)
next to a sampled one; a sampled row draws from its own generator, seeded from (seed, input index), so a
seed gives the same text whatever batch the row lands in; a row whose scores are broken fails alone.

Sampling follows Hugging Face's warpers (temperature, then top-k, then top-p, with their semantics) and
draws by inverse CDF in float64 from one uniform number per row and step, taken on the CPU whatever the
model's device. Every quantity is computed row by row, so a row's token never depends on its neighbours.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

NEG_INF = float("-inf")

GREEDY_BELOW = 1e-4
"""Temperatures below this (0 included) mean greedy decoding, the limit sampling tends to as the temperature
falls. Far smaller ones are 0 or subnormal in float32, where dividing the scores by them gives infinities
and NaN probabilities; at 1e-4 a sample already differs from the argmax only on near-exact ties."""

SEED_SPAN = 2 ** 64  # torch generators take 64-bit seeds; larger (or negative) ones are taken modulo this
_MIX = 1_000_003  # seed * _MIX + index: seed 1's first input is not seed 0's second (as with seed + index)


def is_sampled(temperature: float) -> bool:
    """Whether a row at this temperature samples (else it takes the argmax); NaN counts as greedy."""
    return temperature >= GREEDY_BELOW


def row_seed(seed: int, index: int) -> int:
    """The seed of input ``index``'s stream under the user's ``seed`` (any integer, reduced modulo 2**64):
    ``lorakit generate``'s input i and the server's row i (prompt i, or choice i of ``n``) share it."""
    return (seed * _MIX + index) % SEED_SPAN


def row_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` modulo 2**64, or from the OS when ``seed`` is None."""
    value = seed % SEED_SPAN if seed is not None else int.from_bytes(os.urandom(8), "little")
    return torch.Generator().manual_seed(value)


@dataclass(frozen=True)
class Sampling:
    """How one row picks its tokens. ``temperature`` below ``GREEDY_BELOW``: the argmax (the default);
    ``top_k`` 0 and ``top_p`` 1.0 are off. ``generator`` is the row's own stream (needed when sampled)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = field(default=None, compare=False)

    @property
    def sampled(self) -> bool:
        return is_sampled(self.temperature)


GREEDY = Sampling()


def filter_scores(scores: torch.Tensor, temperature: float | Sequence[float], top_k: int | Sequence[int],
                  top_p: float | Sequence[float]) -> torch.Tensor:
    """Temperature, then top-k (0 = off), then nucleus (top-p, 1.0 = off) filtering, with HF's semantics and
    order; each setting is one value for all rows or one per row. A row's result is the same whatever the
    other rows are (equal to filtering it alone)."""
    rows, vocab = scores.shape
    temps = [float(temperature)] * rows if isinstance(temperature, (int, float)) else [float(t) for t in temperature]
    ks = [int(top_k)] * rows if isinstance(top_k, int) else [int(k) for k in top_k]
    ps = [float(top_p)] * rows if isinstance(top_p, (int, float)) else [float(p) for p in top_p]
    scores = _divide(scores, temps)
    on_k = [0 < k < vocab for k in ks]
    if any(on_k):
        kth = torch.topk(scores, max(k for k, on in zip(ks, on_k, strict=True) if on), dim=-1).values
        cut = [k - 1 if on else 0 for k, on in zip(ks, on_k, strict=True)]
        kth = kth.gather(1, torch.tensor(cut, device=scores.device)[:, None])
        if not all(on_k):
            kth = kth.masked_fill(~torch.tensor(on_k, device=scores.device)[:, None], NEG_INF)
        scores = scores.masked_fill(scores < kth, NEG_INF)
    if any(p < 1.0 for p in ps):
        ordered, order = torch.sort(scores, descending=False, stable=True)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        # per row: cumulative <= 1 - top_p (as HF compares with the float32 of 1 - top_p); off rows: -inf
        limit = torch.tensor([1 - p if p < 1.0 else NEG_INF for p in ps], dtype=cumulative.dtype,
                             device=scores.device)
        drop = cumulative <= limit[:, None]
        drop[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), NEG_INF)
    return scores


def _divide(scores: torch.Tensor, temps: list[float]) -> torch.Tensor:
    """``scores / temperature`` per row, each row divided by its Python float exactly as a batch of rows at
    one temperature would be (a float32 tensor of temperatures could round them differently)."""
    if len(set(temps)) == 1:
        return scores / temps[0] if temps[0] != 1.0 else scores
    out = scores.clone()
    for t in set(temps):
        if t != 1.0:
            index = torch.tensor([j for j, u in enumerate(temps) if u == t], device=scores.device)
            out[index] = scores.index_select(0, index) / t
    return out


def unusable_rows(best: torch.Tensor) -> list[int]:
    """Rows whose scores give no token, from each row's maximum ``best``: a NaN or +inf anywhere, or every
    token at -inf (a masked token's -inf alone is fine) are exactly the rows whose maximum is not finite
    (``max`` propagates NaN). The maximum comes with the argmax greedy rows need anyway, so the check costs
    no pass over the scores (``isfinite`` over the whole batch is slow on CPU)."""
    return (~torch.isfinite(best)).nonzero().flatten().tolist()


def choose(logits: torch.Tensor, rows: Sequence[Sampling],
           ban: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, list[int]]:
    """(one token per row: the argmax for greedy rows, else a sample with the row's settings and generator;
    the rows that got no usable token because their scores are not finite, see ``unusable_rows``).

    ``ban`` sets scores of tokens a row may not take to -inf, in place (n-gram blocking), after the check
    for broken scores (so a banned token is never mistaken for one). Each row stands alone: a row with
    broken scores never changes what the others get, and a sampled row whose scores overflow at its
    temperature (finite logits, infinite once divided) takes the argmax.
    """
    best, tokens = logits.max(dim=-1)
    broken = unusable_rows(best)
    if ban is not None:
        ban(logits)
        tokens = logits.argmax(dim=-1)
    skip = set(broken)
    sampled = [j for j, row in enumerate(rows) if row.sampled and j not in skip]
    if not sampled:
        return tokens, broken
    every = len(sampled) == len(rows)
    index = None if every else torch.tensor(sampled, device=logits.device)
    scores = logits if every else logits.index_select(0, index)
    picks = [rows[j] for j in sampled]
    scores = filter_scores(scores, [r.temperature for r in picks], [r.top_k for r in picks],
                           [r.top_p for r in picks])
    drawn, usable = _inverse_cdf(scores, [r.generator for r in picks])
    if every and all(usable):
        return drawn, broken
    for k, j in enumerate(sampled):
        if usable[k]:
            tokens[j] = drawn[k]
    return tokens, broken


def _inverse_cdf(scores: torch.Tensor, generators: Sequence[torch.Generator | None]) -> tuple[torch.Tensor,
                                                                                           list[bool]]:
    """(a token per row drawn by inverse CDF in float64, one uniform draw each; whether the row's
    probabilities were usable, i.e. not NaN from scores that overflowed). Tokens at -inf are never picked."""
    if any(g is None for g in generators):
        raise ValueError("a sampled row needs its own generator (see row_generator)")
    cdf = torch.softmax(scores.double(), dim=-1).cumsum(dim=-1)
    total = cdf[:, -1:]
    draws = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generators])
    picked = torch.searchsorted(cdf, draws.to(cdf.device)[:, None] * total, right=True)
    picked = picked.clamp_(max=scores.shape[-1] - 1)[:, 0]
    return picked, (~total[:, 0].isnan()).tolist()
