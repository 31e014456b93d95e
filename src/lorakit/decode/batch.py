"""The live batch of greedy / sampled decoding, shared by ``lorakit generate`` and the server's engine.

Why one class: rows that decode together must keep their KV cache rows, attention mask, positions,
next-token scores, sampling settings and n-gram history aligned while rows finish (they leave at once,
cache included) and new ones join (prefilled apart, then stacked below, right-aligned). Padding columns
that no live row attends to any more are dropped as rows leave. Each row also follows one stopping rule
(``take_token``), so the command line and the server end a row at the same token.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Generic, TypeVar

import torch

from .cache import drop_front, growable, select_rows, stack
from .logits import NGramBlocker
from .runner import CausalLM, left_pad
from .sampling import Sampling, choose

R = TypeVar("R")


def grow_mask(mask: torch.Tensor) -> torch.Tensor:
    """The attention mask with one more attended column (each row's newest token)."""
    return torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)


def leading_padding(mask: torch.Tensor) -> int:
    """How many first columns are padding in every row (no live row attends to them)."""
    used = mask.any(dim=0)
    return int(used.to(torch.int8).argmax()) if bool(used.any()) else 0


def take_token(token: int, output: list[int], max_tokens: int, eos: Container[int]) -> str | None:
    """Take ``token`` into a row's ``output``; why the row ends, if it does: ``"stop"`` at an EOS token (not
    part of the output), ``"length"`` once ``max_tokens`` tokens are written."""
    if token in eos:
        return "stop"
    output.append(token)
    return "length" if len(output) >= max_tokens else None


class LiveBatch(Generic[R]):
    """Rows decoded together; ``rows`` holds the caller's handle for each (an input index, a request row).

    A step is ``choose()`` (each row's next token), then ``keep()`` for the rows that go on, then
    ``step()`` (one forward pass over the kept rows' tokens). ``stack()`` adds freshly prefilled rows.
    """

    def __init__(self, lm: CausalLM, prompts: Sequence[Sequence[int]], rows: list[R], sampling: list[Sampling],
                 pad_id: int, headroom: int, no_repeat_ngram_size: int = 0) -> None:
        """Prefill ``prompts`` (left-padded; room in the cache for ``headroom`` new tokens)."""
        ids, self.mask = left_pad(prompts, pad_id, lm.device)
        self.lm = lm
        self.logits, self.cache, self.positions = lm.prefill(ids, self.mask, headroom=headroom)
        self.rows, self.sampling = list(rows), list(sampling)
        self.blocker = NGramBlocker(no_repeat_ngram_size, ids, self.mask) if no_repeat_ngram_size else None
        self.growable = growable(self.cache)  # whether rows can leave the cache's front padding and join
        self.tokens: torch.Tensor | None = None  # chosen by ``choose``, fed by ``step``

    def __len__(self) -> int:
        return len(self.rows)

    def choose(self) -> tuple[list[int], list[int]]:
        """(the next token of every row; rows whose scores are not finite, which got no real token)."""
        ban = self.blocker.ban if self.blocker is not None else None
        self.tokens, broken = choose(self.logits, self.sampling, ban)
        return self.tokens.tolist(), broken

    def keep(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (they stay in order); padding columns nobody needs any more go too."""
        if len(keep) == len(self.rows):
            return
        self.rows, self.sampling = [self.rows[i] for i in keep], [self.sampling[i] for i in keep]
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
        if self.tokens is not None:
            self.tokens = self.tokens[index]
        if self.blocker is not None:
            self.blocker.select(index)
            self.blocker.trim()
        if not keep:
            return
        select_rows(self.cache, index)
        lead = leading_padding(self.mask) if self.growable else 0
        if lead:
            self.mask = self.mask[:, lead:]
            drop_front(self.cache, lead)

    def step(self) -> None:
        """Feed each row's chosen token through the model; ``logits`` then predict the token after it."""
        if self.tokens is None:
            raise RuntimeError("step() needs choose() first")
        tokens, self.tokens = self.tokens, None
        if self.blocker is not None:
            self.blocker.append(tokens)
        self.mask, self.positions = grow_mask(self.mask), self.positions + 1
        self.logits = self.lm.step(tokens, self.cache, self.mask, self.positions)

    def stack(self, other: LiveBatch[R]) -> LiveBatch[R]:
        """Add ``other``'s rows (fresh from their prefill) below these, right-aligned; the batch to go on with
        (``other`` itself when this one is empty)."""
        if not self.rows:
            return other
        stack(self.cache, other.cache)
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0)) for m in (self.mask, other.mask)])
        self.positions = torch.cat([self.positions, other.positions])
        self.logits = torch.cat([self.logits, other.logits])
        self.rows, self.sampling = self.rows + other.rows, self.sampling + other.sampling
        if self.blocker is not None and other.blocker is not None:
            self.blocker.stack(other.blocker)
        return self
