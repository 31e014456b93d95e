"""Official metrics: E2E (BLEU, NIST, METEOR, ROUGE-L, CIDEr; and the slot error rate), WebNLG/DART
(BLEU, METEOR, TER) and GLUE, computed the way the official scorers and the LoRA paper compute them; and
BLEU / ROUGE-L / exact match or accuracy / macro F1 / Matthews against a user's own data file.

METEOR and the E2E scorer's tokenizer are Java programs (shipped inside pycocoevalcap); without Java,
METEOR is reported as None with a :class:`MetricsWarning` and everything else is still computed.

Names load lazily: pycocoevalcap and sacrebleu are the optional ``metrics`` extra, and ``lorakit``'s
command line imports :mod:`lorakit.metrics.cli` to build its parser even when they are not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# the ``metrics`` extra, by what scores with it
GENERATION_METRICS = ("pycocoevalcap", "sacrebleu")  # BLEU, NIST, METEOR, ROUGE-L, CIDEr, TER
LABEL_METRICS = ("scipy", "sklearn")  # accuracy, F1, Matthews, Pearson, Spearman

_WHERE = {
    "E2E_METRICS": "e2e", "e2e_scores": "e2e", "evaluate_predictions": "evaluate", "write_references": "evaluate",
    "classification_scores": "evaluate", "evaluate_user_predictions": "evaluate", "text_scores": "evaluate",
    "read_label_names": "labels",
    "SlotErrors": "ser", "read_mrs": "ser", "slot_error_rate": "ser", "slot_errors": "ser", "slot_scores": "ser",
    "glue_metric": "glue", "glue_scores": "glue",
    "Meteor15": "coco", "shared_meteor": "coco",
    "MetricsFileError": "files", "MetricsWarning": "files", "read_e2e_refs": "files", "read_hypotheses": "files",
    "corpus_bleu": "mteval", "corpus_nist": "mteval",
    "WEBNLG_METRICS": "webnlg", "dart_scores": "webnlg", "webnlg_scores": "webnlg",
    "webnlg_scores_by_category": "webnlg",
}
__all__ = sorted([*_WHERE, "GENERATION_METRICS", "LABEL_METRICS", "require_metrics"])


def require_metrics(setting: str, modules: tuple[str, ...]) -> None:
    """Refuse ``setting`` at once when the part of the ``metrics`` extra it scores with is missing, so that a
    run does not train for an hour and then fail at its first evaluation."""
    if missing := [name for name in modules if importlib.util.find_spec(name) is None]:
        raise ImportError(f"{setting} needs the metrics extra ({', '.join(missing)} not installed): "
                          "pip install 'lorakit[metrics]'")


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
