"""The E2E NLG Challenge scores (e2e-metrics ``measure_scores.py -p``), as the LoRA paper reports for E2E."""

from __future__ import annotations

from collections.abc import Sequence

from .coco import Meteor15, coco_scores
from .mteval import corpus_bleu, corpus_nist

E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Fail early and clearly: the scorers underneath would crash deep inside, or silently zip short."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses must be a list of strings and references a list of lists of strings")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists (one per input)")
    for index, refs in enumerate(references):
        if isinstance(refs, str):
            raise TypeError(f"references[{index}] is a string; each input needs a list of reference strings")
        if not refs:
            raise ValueError(f"input {index} has no references")


def e2e_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *,
               meteor: Meteor15 | None = None, with_meteor: bool = True) -> dict[str, float | None]:
    """BLEU (a fraction, as the E2E scorer prints it), NIST, METEOR, ROUGE_L and CIDEr over a corpus.

    ``references[i]`` holds every reference of input ``i``; all metrics use them all at once. BLEU and
    NIST are mteval-v13a's (13a tokens, case-insensitive, as the scorer's Python port runs them); the
    other three are MS-COCO's on Stanford-PTB-tokenised lowercased text. METEOR is None (with a
    MetricsWarning) when Java is missing. ``meteor`` lets a caller scoring several corpora share one
    METEOR process (starting one takes seconds: it loads a paraphrase table); ``with_meteor=False`` leaves
    METEOR out (and Java unstarted).
    """
    check_inputs(hypotheses, references)
    scores = {
        "BLEU": corpus_bleu(hypotheses, references, lowercase=True) / 100,
        "NIST": corpus_nist(hypotheses, references, lowercase=True),
        **coco_scores(hypotheses, references, meteor, with_meteor=with_meteor),
    }
    return {name: scores[name] for name in E2E_METRICS if name in scores}
