"""Scores cheap enough to compute every few hundred steps during training.

METEOR is left out: it starts a Java process that loads a paraphrase table (seconds each time, and about
2 GB). ``lorakit evaluate`` gives the full official set on the final outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from .e2e import check_inputs, e2e_scores
from .mteval import corpus_bleu


def training_scores(task: str, hypotheses: Sequence[str], references: Sequence[Sequence[str]]
                    ) -> dict[str, float]:
    """E2E: BLEU (a fraction, as its scorer prints it), NIST, ROUGE_L and CIDEr, as ``e2e_scores`` computes
    them; WebNLG and DART: BLEU (percent, case kept, as GenerationEval) and TER (their own metrics but
    METEOR); any reference lists: several references per output allowed."""
    if task == "e2e":
        return {name: float(value or 0.0) for name, value in e2e_scores(hypotheses, references,
                                                                          with_meteor=False).items()}
    check_inputs(hypotheses, references)
    from .webnlg import best_ter

    ter = best_ter(hypotheses, references)
    return {"BLEU": corpus_bleu(hypotheses, references, lowercase=False), "TER": sum(ter) / len(ter)}
