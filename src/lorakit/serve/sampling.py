"""Next tokens for a batch whose rows each have their own temperature, top-p and random generator.

Why per row: requests in one batch come from different clients; a greedy request must stay greedy (and equal
to running it alone) next to a sampled one, and a request with a seed must give the same text whatever
batch it lands in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def top_p_filter(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep, per row, the smallest set of tokens whose probability reaches ``top_p`` (at least one token);
    the rest get -inf. ``top_p`` holds one value per row."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    probs = sorted_scores.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= top_p[:, None]
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


GREEDY_BELOW = 1e-4
"""Temperatures below this (0 included) mean greedy decoding, the limit sampling tends to as the temperature
falls. Far smaller ones are 0 or subnormal in float32, where dividing the scores by them gives infinities
and NaN probabilities; at 1e-4 a sample already differs from the argmax only on near-exact ties."""


def is_sampled(temperature: float) -> bool:
    """Whether a row at this temperature samples (else it takes the argmax); NaN counts as greedy."""
    return temperature >= GREEDY_BELOW


def unusable_rows(logits: torch.Tensor) -> list[int]:
    """Rows whose scores give no token: a NaN or +inf anywhere, or every token at -inf (a masked token's
    -inf alone is fine). Checked on every step, so only rows whose sum is not finite are looked at closely
    (a finite sum has no NaN and no infinity; ``isfinite`` over the whole batch is slow on CPU)."""
    suspects = (~torch.isfinite(logits.sum(dim=-1))).nonzero().flatten().tolist()
    bad = []
    for j in suspects:
        row = logits[j]
        if bool(row.isnan().any()) or bool(torch.isposinf(row).any()) or bool(torch.isneginf(row).all()):
            bad.append(j)
    return bad


def choose(logits: torch.Tensor, temperature: Sequence[float], top_p: Sequence[float],
           generators: Sequence[torch.Generator | None]) -> tuple[torch.Tensor, list[int]]:
    """(one token per row: the argmax for greedy rows, else a sample at the row's temperature and top-p;
    the rows that got no usable token because their scores are not finite, see ``unusable_rows``).

    Each row stands alone: a row with broken scores never changes what the others get, and a sampled row
    whose scores overflow at its temperature (finite logits, infinite once divided) takes the argmax."""
    tokens = logits.argmax(dim=-1)
    broken = unusable_rows(logits)
    skip = set(broken)
    sampled = [j for j, t in enumerate(temperature) if is_sampled(t) and j not in skip]
    if not sampled:
        return tokens, broken
    index = torch.tensor(sampled, device=logits.device)
    temps = torch.tensor([temperature[j] for j in sampled], dtype=logits.dtype, device=logits.device)
    scores = logits.index_select(0, index) / temps[:, None]
    ps = torch.tensor([top_p[j] for j in sampled], dtype=logits.dtype, device=logits.device)
    if bool((ps < 1).any()):
        scores = top_p_filter(scores, ps)
    probs = scores.softmax(dim=-1)
    usable = (~probs.sum(dim=-1).isnan()).tolist()  # probabilities are in [0, 1] or NaN
    for k, j in enumerate(sampled):
        if usable[k]:
            tokens[j] = torch.multinomial(probs[k], 1, generator=generators[j])[0]
    return tokens, broken


class StopText:
    """The text of a growing token sequence as a client may see it: cut at the first stop string, and
    holding back a tail that may still become a stop string (or an incomplete UTF-8 character)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.sent = 0  # characters already handed out

    def update(self, text: str) -> tuple[str, bool]:
        """(new text to hand out, whether a stop string was reached) for the full decoded ``text`` so far."""
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            return self._take(text[:cut]), True
        safe = len(text)
        while safe > self.sent and text[safe - 1] == "\ufffd":  # a multi-byte character not finished yet
            safe -= 1
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    safe = min(safe, len(text) - k)
                    break
        return self._take(text[:safe]), False

    def finish(self, text: str) -> str:
        """Whatever was held back, once the sequence ends without a stop string."""
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        return self._take(text[:cut] if cut >= 0 else text)

    def _take(self, text: str) -> str:
        new = text[self.sent:] if len(text) > self.sent else ""
        self.sent = max(self.sent, len(text))
        return new
