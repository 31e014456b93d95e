"""GLUE's official metrics (as the GLUE benchmark and the LoRA paper report them, times 100): Matthews
correlation (CoLA), accuracy, F1 of the positive class (MRPC, QQP), Pearson and Spearman (STS-B).
scikit-learn and scipy compute them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.glue import glue_spec


def glue_metric(name: str, predictions: Sequence[float], labels: Sequence[float]) -> float:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not len(labels):
        raise ValueError("no examples to score")
    pred, gold = np.asarray(predictions), np.asarray(labels)
    if name == "matthews":
        value = matthews_corrcoef(gold, pred)
    elif name == "accuracy":
        value = accuracy_score(gold, pred)
    elif name == "f1":
        value = f1_score(gold, pred)
    elif name == "pearson":
        value = pearsonr(pred, gold)[0]
    elif name == "spearman":
        value = spearmanr(pred, gold)[0]
    else:
        raise ValueError(f"unknown GLUE metric {name!r}")
    return float(value) * 100


def glue_scores(task: str, predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """The task's metrics, headline first (class ids for classification, scores for STS-B)."""
    return {m: glue_metric(m, predictions, labels) for m in glue_spec(task).metrics}
