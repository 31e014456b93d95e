"""Semantic reranking for E2E: of an input's candidate outputs, keep the one with the fewest slot errors.

Why: beam search ranks by likelihood, which barely sees a dropped price or a flipped "family friendly"; the
E2E challenge systems reranked their beams with a slot check for this reason (TGen, Dušek & Jurčíček 2016;
Juraska et al. 2018's slot aligner). Here the check is lorakit's SER matcher (``lorakit.metrics.ser``).

- After beam search (``rerank_by_slots``): the first (most likely) hypothesis among those with the fewest
  missing + added + wrong slots wins, so an input whose top beam is already right keeps it.
- After greedy decoding or sampling (``repair_by_slots``): only outputs with a slot error get other
  candidates, beam search's n-best and a few samples, and the output itself stays among them. Among the
  candidates with the fewest errors the consensus wins (the highest mean sentence BLEU against the other
  candidates, minimum Bayes risk decoding as in Kumar & Byrne 2004): samples are many and far from the
  model's likeliest wording, and the consensus is the wording the candidates, and references, share most.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..metrics.ser import slot_errors
from .config import DecodeConfig, preset

RERANKERS: tuple[str, ...] = ("slots",)
TIES: tuple[str, ...] = ("order", "consensus")
REPAIR_SAMPLES = 6  # samples drawn for each output with a slot error (docs/results-nlg.md measures it)
REPAIR_TEMPERATURE = 0.7  # varied enough to state a slot another way, still fluent


@dataclass
class RerankSummary:
    """What reranking changed: inputs whose pick is not the first candidate, and slot errors before and after.
    ``repaired``: after greedy decoding or sampling, how many outputs had a slot error and got candidates."""

    inputs: int = 0
    changed: int = 0
    errors_top: int = 0
    errors_chosen: int = 0
    repaired: int | None = None

    def __str__(self) -> str:
        if self.repaired is None:
            return (f"reranked {self.inputs} n-best lists by slot errors: {self.changed} picks changed, slot "
                    f"errors {self.errors_top} (top beams) -> {self.errors_chosen}")
        return (f"{self.repaired} of {self.inputs} outputs had slot errors and got other candidates: {self.changed} "
                f"replaced, slot errors {self.errors_top} -> {self.errors_chosen}")


def consensus(texts: Sequence[str], index: int) -> float:
    """Mean sentence BLEU (sacrebleu's) of ``texts[index]`` against each other text."""
    from sacrebleu import sentence_bleu

    others = [t for j, t in enumerate(texts) if j != index]
    return sum(sentence_bleu(texts[index], [t]).score for t in others) / max(len(others), 1)


def rerank_by_slots(mrs: Sequence[str], candidates: Sequence[Sequence[str]], *, ties: str = "order"
                    ) -> tuple[list[str], RerankSummary]:
    """For each MR, one of its candidates with the fewest slot errors: the first (``ties="order"``) or the
    consensus (``"consensus"``); and what that changed against the first candidates."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    if len(mrs) != len(candidates):
        raise ValueError(f"{len(mrs)} MRs but {len(candidates)} candidate lists")
    chosen, summary = [], RerankSummary(inputs=len(mrs))
    for index, (mr, texts) in enumerate(zip(mrs, candidates, strict=True)):
        if not texts:
            raise ValueError(f"input {index} has an empty candidate list")
        counts = [slot_errors(mr, text).count for text in texts]
        least = min(counts)
        fewest = [j for j, count in enumerate(counts) if count == least]
        best = fewest[0]
        if ties == "consensus" and len(fewest) > 1:
            best = max(fewest, key=lambda j: (consensus(texts, j), -j))
        chosen.append(texts[best])
        summary.changed += best != 0
        summary.errors_top += counts[0]
        summary.errors_chosen += counts[best]
    return chosen, summary


def repair_candidates(model, tokenizer, prompts: Sequence[str], config: DecodeConfig, *,
                      samples: int = REPAIR_SAMPLES, batch_size: int = 16, progress: bool = True
                      ) -> tuple[list[list[str]], list[list[str]]]:
    """For each prompt, beam search's n-best (the LoRA paper's E2E beam settings) and ``samples`` samples
    (temperature 0.7, seeds ``config.seed`` on), both at ``config.max_new_tokens``."""
    from .api import generate, generate_hypotheses

    beams = generate_hypotheses(model, tokenizer, prompts, preset("e2e", max_new_tokens=config.max_new_tokens),
                                batch_size=batch_size, progress=progress)
    drawn = [generate(model, tokenizer, prompts, DecodeConfig("sample", max_new_tokens=config.max_new_tokens,
                                                              temperature=REPAIR_TEMPERATURE, seed=config.seed + k),
                      batch_size=batch_size, progress=progress) for k in range(samples)]
    return beams, [list(row) for row in zip(*drawn, strict=True)] if drawn else [[] for _ in prompts]


def repair_by_slots(model, tokenizer, mrs: Sequence[str], prompts: Sequence[str], outputs: Sequence[str],
                    config: DecodeConfig, *, samples: int = REPAIR_SAMPLES, batch_size: int = 16, progress: bool = True
                    ) -> tuple[list[str], RerankSummary]:
    """``outputs`` (greedy or sampled) with each one that has a slot error replaced by the least wrong of: the
    output itself, beam search's n-best (the LoRA paper's E2E beam settings) and ``samples`` samples
    (temperature 0.7, seeds ``config.seed`` on), ties to the consensus. Costs decoding for those inputs only."""
    if not len(mrs) == len(prompts) == len(outputs):
        raise ValueError(f"{len(mrs)} MRs, {len(prompts)} prompts and {len(outputs)} outputs")
    wrong = [i for i, (mr, text) in enumerate(zip(mrs, outputs, strict=True)) if slot_errors(mr, text).count]
    texts = list(outputs)
    summary = RerankSummary(inputs=len(mrs), repaired=len(wrong))
    if not wrong:
        return texts, summary
    beams, drawn = repair_candidates(model, tokenizer, [prompts[i] for i in wrong], config, samples=samples,
                                     batch_size=batch_size, progress=progress)
    lists = [[outputs[i], *beams[j], *drawn[j]] for j, i in enumerate(wrong)]
    picked, found = rerank_by_slots([mrs[i] for i in wrong], lists, ties="consensus")
    for i, text in zip(wrong, picked, strict=True):
        texts[i] = text
    summary.changed, summary.errors_top, summary.errors_chosen = found.changed, found.errors_top, found.errors_chosen
    return texts, summary
