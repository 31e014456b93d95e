"""WebNLG and DART scores as the LoRA paper's evaluation computes them (the WebNLG challenge's GenerationEval).

That script runs ``multi-bleu-detok.perl`` on raw text (BLEU in percent, case-sensitive, 13a tokens),
meteor-1.5 with ``-norm`` (corpus level), and TER per output against each reference, keeping the best
(lowest) per output and averaging over outputs, on NLTK-tokenised text. Here BLEU is sacrebleu's 13a
BLEU (the same computation), METEOR is pycocoevalcap's meteor-1.5 with ``-norm`` on raw text (``-norm``
tokenises and lowercases for itself), and TER is sacrebleu's tercom-compatible TER on a Treebank-style
tokenisation standing in for NLTK's (GenerationEval used the ``pyter`` package, whose shift search is a
simpler approximation of tercom's; the two can differ slightly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sacrebleu.metrics import TER

from .coco import Meteor15, meteor_or_none, shared_meteor
from .e2e import check_inputs
from .mteval import corpus_bleu
from .tokenize import treebank_tokenize

WEBNLG_METRICS = ("BLEU", "METEOR", "TER")


class HasReferences(Protocol):
    """What :func:`webnlg_scores_by_category` reads from an example (``lorakit.data.Example`` fits)."""

    references: Sequence[str]
    meta: Mapping[str, Any]


def best_ter(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per output, the lowest TER against any single reference, as a fraction (GenerationEval's TER)."""
    ter = TER(case_sensitive=True)
    out = []
    for hyp, refs in zip(hypotheses, references, strict=True):
        hyp_tok = treebank_tokenize(hyp)
        # An empty reference has no defined TER; GenerationEval scores it 1 (the worst), so it never wins.
        scores = [ter.sentence_score(hyp_tok, [treebank_tokenize(r)]).score / 100 for r in refs if r.strip()]
        out.append(min(scores, default=1.0))
    return out


def webnlg_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *,
                  meteor: Meteor15 | None = None, ter: Sequence[float] | None = None) -> dict[str, float | None]:
    """BLEU (percent, as multi-bleu-detok prints it), METEOR and TER (fractions) over a corpus; also DART's.

    TER is the mean of per-output TERs, not a corpus TER: that is what the LoRA paper's tables report.
    It is also the slow part (tercom's shift search in pure Python: about a minute for the 2,000 output
    and reference pairs of WebNLG dev), hence ``ter``, per-output values a caller already has.
    ``meteor`` lets a caller scoring several subsets share one METEOR process. METEOR is None (with a
    MetricsWarning) when Java is missing.
    """
    check_inputs(hypotheses, references)
    ter = best_ter(hypotheses, references) if ter is None else ter
    if len(ter) != len(hypotheses):
        raise ValueError(f"{len(ter)} TER values for {len(hypotheses)} hypotheses")
    return {
        "BLEU": corpus_bleu(hypotheses, references, lowercase=False),
        "METEOR": meteor_or_none(hypotheses, references, meteor),
        "TER": sum(ter) / len(ter),
    }


dart_scores = webnlg_scores


def webnlg_scores_by_category(examples: Sequence[HasReferences], hypotheses: Sequence[str]
                              ) -> dict[str, dict[str, float | None]]:
    """Scores on the "seen", "unseen" and "all" subsets (LoRA's S/U/A columns), split by ``meta["seen"]``.

    Each subset is scored as its own corpus (BLEU is not an average of parts). Subsets with no examples
    are left out, so a dev set (all seen) gives only "seen" and "all".
    """
    references = [list(ex.references) for ex in examples]
    check_inputs(hypotheses, references)
    subsets = {"seen": [i for i, ex in enumerate(examples) if ex.meta["seen"]],
               "unseen": [i for i, ex in enumerate(examples) if not ex.meta["seen"]],
               "all": list(range(len(examples)))}
    ter = best_ter(hypotheses, references)  # once: the subsets overlap and TER is the slow metric

    def score(meteor: Meteor15 | None) -> dict[str, dict[str, float | None]]:
        return {name: webnlg_scores([hypotheses[i] for i in idx], [references[i] for i in idx], meteor=meteor,
                                    ter=[ter[i] for i in idx])
                for name, idx in subsets.items() if idx}

    with shared_meteor() as meteor:
        return score(meteor)
