"""Score processing shared by the strategies: n-gram blocking, sampling filters, a per-input sampler.

Everything is vectorised over rows: HF's no-repeat processor rebuilds every row's n-gram table in Python
at every step, which dominates beam search over ten beams per input.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")
_MIX = 1_000_003  # seed * _MIX + input index: distinct streams per input


class NGramBlocker:
    """Bans tokens that would repeat an n-gram already present in a row's prompt + output, like HF's
    ``no_repeat_ngram_size``.

    The history is a (rows, columns) tensor with each row's text right-aligned and padding stored as -1.
    Difference from HF: HF also counts padding tokens as text, so a left-padded row could be banned from an
    n-gram of pad tokens; here padding never matches, which keeps a row's output independent of the batch it
    is in (the two agree whenever a row's text is at least n - 1 tokens).
    """

    def __init__(self, n: int, ids: torch.Tensor, mask: torch.Tensor) -> None:
        self.n = n
        self.history = ids.masked_fill(mask == 0, -1)

    def select(self, rows: torch.Tensor) -> None:
        self.history = self.history[rows]

    def append(self, tokens: torch.Tensor) -> None:
        self.history = torch.cat([self.history, tokens[:, None]], dim=1)

    def stack(self, other: NGramBlocker) -> None:
        """Add ``other``'s rows below, right-aligned; then drop columns that are padding in every row."""
        width = max(self.history.shape[1], other.history.shape[1])
        parts = [torch.nn.functional.pad(h, (width - h.shape[1], 0), value=-1)
                 for h in (self.history, other.history)]
        self.history = torch.cat(parts, dim=0)
        self.trim()

    def trim(self) -> None:
        used = (self.history >= 0).any(dim=0)
        first = int(used.to(torch.int8).argmax()) if bool(used.any()) else self.history.shape[1]
        if first:
            self.history = self.history[:, first:]

    def ban(self, scores: torch.Tensor) -> None:
        """Set the scores of banned tokens to -inf, in place."""
        n, length = self.n, self.history.shape[1]
        starts = length - n + 1  # n-grams whose last token is already in the history
        if starts <= 0:
            return
        history = self.history
        match = torch.ones((history.shape[0], starts), dtype=torch.bool, device=history.device)
        for j in range(n - 1):  # n-gram prefix equals the row's last n - 1 tokens
            match &= history[:, j:j + starts] == history[:, length - n + 1 + j, None]
        if n > 1:
            match &= (history[:, length - n + 1:] >= 0).all(1, keepdim=True)
        rows, cols = match.nonzero(as_tuple=True)
        tokens = history[rows, cols + n - 1]
        valid = tokens >= 0
        scores[rows[valid], tokens[valid]] = NEG_INF


def filter_scores(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering, with HF's semantics and order."""
    if temperature != 1.0:
        scores = scores / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, NEG_INF)
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p
        drop[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), NEG_INF)
    return scores


class RowSampler:
    """Draws one token per row from its own random stream, keyed by the input's index.

    Why: a shared generator would make an input's sample depend on which inputs share its batch and in
    which order; with one stream per input the same seed gives the same text for any batch size.
    """

    def __init__(self, seed: int, keys: list[int]) -> None:
        self.generators = [torch.Generator().manual_seed((seed * _MIX + key) % 2**63) for key in keys]

    def select(self, rows: list[int]) -> None:
        self.generators = [self.generators[r] for r in rows]

    def stack(self, other: RowSampler) -> None:
        self.generators = self.generators + other.generators

    def sample(self, scores: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF sampling in float64: one uniform draw per row; tokens at -inf are never picked."""
        probs = torch.softmax(scores.double(), dim=-1)
        cdf = probs.cumsum(dim=-1)
        draws = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])
        targets = draws.to(cdf.device)[:, None] * cdf[:, -1:]
        picked = torch.searchsorted(cdf, targets, right=True).clamp_(max=scores.shape[-1] - 1)
        return picked[:, 0]
