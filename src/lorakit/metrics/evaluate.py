"""Score a predictions file against a dataset split's own references (``lorakit evaluate``), so nobody has to
build a references file by hand and get its order or grouping wrong."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .files import read_hypotheses


def evaluate_predictions(task: str, split: str, predictions: str | os.PathLike[str],
                         root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Scores of ``predictions`` (one line per input, in the split's order, as ``lorakit generate`` writes
    them) on ``task``'s ``split``: E2E's five metrics, or WebNLG/DART's BLEU/METEOR/TER (WebNLG per
    seen/unseen/all category)."""
    from ..tasks import get_task
    from .e2e import e2e_scores
    from .webnlg import dart_scores, webnlg_scores_by_category

    examples = get_task(task).examples(split, root)
    missing = sum(1 for ex in examples if not ex.references)
    if missing:
        raise ValueError(f"{task} {split}: {missing} of {len(examples)} inputs have no references "
                         "(a test split whose references are held back cannot be scored)")
    hypotheses = read_hypotheses(predictions, expected=len(examples))
    references = [list(ex.references) for ex in examples]
    if task == "e2e":
        return e2e_scores(hypotheses, references)
    if task == "webnlg":
        return webnlg_scores_by_category(examples, hypotheses)
    return dart_scores(hypotheses, references)


def write_references(task: str, split: str, path: str | os.PathLike[str],
                     root: str | os.PathLike[str] | None = None) -> int:
    """The split's references in the e2e-metrics layout (an input's references on consecutive lines, inputs
    separated by an empty line), for ``lorakit metrics`` or the official scorers; returns the input count."""
    from ..files import atomic_write
    from ..tasks import get_task

    examples = get_task(task).examples(split, root)
    text = "\n\n".join("\n".join(ex.references) for ex in examples) + "\n"
    atomic_write(Path(path), text.encode("utf-8"))
    return len(examples)
