"""Semantic reranking for E2E: from beam search's n-best list, keep the hypothesis with the fewest slot errors.

Why: beam search ranks by likelihood, which barely sees a dropped price or a flipped "family friendly"; the
E2E challenge systems reranked their beams with a slot check for this reason (TGen, Dušek & Jurčíček 2016;
Juraska et al. 2018's slot aligner). Here the check is lorakit's SER matcher (``lorakit.metrics.ser``): the
first (most likely) hypothesis among those with the fewest missing + added + wrong slots wins, so an input
whose top beam is already right keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..metrics.ser import slot_errors

RERANKERS: tuple[str, ...] = ("slots",)


@dataclass
class RerankSummary:
    """What reranking changed: inputs whose pick is not the top beam, and slot errors before and after."""

    inputs: int = 0
    changed: int = 0
    errors_top: int = 0
    errors_chosen: int = 0

    def __str__(self) -> str:
        return (f"reranked {self.inputs} n-best lists by slot errors: {self.changed} picks changed, slot errors "
                f"{self.errors_top} (top beams) -> {self.errors_chosen}")


def rerank_by_slots(mrs: Sequence[str], hypotheses: Sequence[Sequence[str]]) -> tuple[list[str], RerankSummary]:
    """For each MR, the first of its hypotheses with the fewest slot errors; and what that changed."""
    if len(mrs) != len(hypotheses):
        raise ValueError(f"{len(mrs)} MRs but {len(hypotheses)} n-best lists")
    chosen, summary = [], RerankSummary(inputs=len(mrs))
    for index, (mr, texts) in enumerate(zip(mrs, hypotheses, strict=True)):
        if not texts:
            raise ValueError(f"input {index} has an empty n-best list")
        counts = [slot_errors(mr, text).count for text in texts]
        best = min(range(len(texts)), key=lambda j: (counts[j], j))
        chosen.append(texts[best])
        summary.changed += best != 0
        summary.errors_top += counts[0]
        summary.errors_chosen += counts[best]
    return chosen, summary
