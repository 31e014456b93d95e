"""N-gram blocking shared by the strategies (sampling filters and the per-row sampler: ``sampling``).

Vectorised over rows: HF's no-repeat processor rebuilds every row's n-gram table in Python at every step,
which dominates beam search over ten beams per input.
"""

from __future__ import annotations

import torch

from .sampling import NEG_INF


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
