"""Batched sentence (pair) classification and regression with an encoder, and GLUE dev scoring.

Inputs are run in length order (little padding) and the outputs put back in input order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..data.glue import GlueExample
from ..tasks import GLUETask, get_task
from ..train.batching import collate_classification


def load_classifier(model: str, task: str, adapter: str | os.PathLike | None = None):
    """``(model, tokenizer)`` for a GLUE task: a base with the task's head size plus an adapter folder, or a
    fully fine-tuned model folder (``adapter`` None)."""
    from .. import load_adapter
    from ..models import load_model

    glue = _glue_task(task)
    net, tokenizer = load_model(model, "sequence-classification",
                                num_labels=glue.num_labels if adapter is not None else None)
    if adapter is not None:
        load_adapter(net, adapter, name=glue.name)
    net.eval()
    return net, tokenizer


def _glue_task(name: str) -> GLUETask:
    task = get_task(name)
    if not isinstance(task, GLUETask):
        raise ValueError(f"{name} is not a classification task")
    return task


@torch.no_grad()
def predict_logits(model: nn.Module, tokenizer, task: str, examples: Sequence[GlueExample], batch_size: int = 64,
                   max_length: int = 256, progress: bool = False) -> torch.Tensor:
    """Logits (rows in input order, fp32 on the CPU); the model's train/eval mode is left as it was."""
    glue = _glue_task(task)
    samples = glue.encode(tokenizer, examples, max_length)
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
    device = next(model.parameters()).device
    out: torch.Tensor | None = None  # sized by the active head, which may differ from config.num_labels
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=f"predict {glue.name}", unit="batch",
                          disable=not progress):
            rows = order[start:start + batch_size]
            batch = collate_classification([samples[i] for i in rows], tokenizer.pad_token_id)
            batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            if out is None:
                out = torch.empty(len(samples), logits.shape[-1])
            out[rows] = logits.float().cpu()
    finally:
        model.train(was_training)
    if out is None:
        raise ValueError("no inputs to classify")
    return out


def to_predictions(task: str, logits: torch.Tensor) -> list[int] | list[float]:
    """Class ids (argmax), or the regression output for STS-B."""
    if _glue_task(task).spec.is_regression:
        return logits[:, 0].tolist()
    return logits.argmax(-1).tolist()


def predict(model: nn.Module, tokenizer, task: str, examples: Sequence[GlueExample], **kw) -> list[int] | list[float]:
    return to_predictions(task, predict_logits(model, tokenizer, task, examples, **kw))


def evaluate_glue(model: nn.Module, tokenizer, task: str, split: str = "dev",
                  root: str | os.PathLike | None = None, **kw) -> dict[str, float]:
    """The task's official metrics (x100) on a labelled split."""
    from ..metrics.glue import glue_scores

    glue = _glue_task(task)
    examples = glue.examples(split, root)
    return glue_scores(glue.name, predict(model, tokenizer, glue.name, examples, **kw), [e.label for e in examples])


def write_predictions(path: str | os.PathLike, task: str, examples: Sequence[GlueExample],
                      predictions: Sequence[int | float], submission: bool = False) -> Path:
    """One prediction per input: its label name (STS-B: the score) on a line. ``submission``: GLUE's format,
    a header ``index<TAB>prediction``, then the test file's index and the label (STS-B clipped to [0, 5])."""
    from ..files import atomic_write

    spec = _glue_task(task).spec
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} inputs")

    def shown(p: int | float) -> str:
        if spec.is_regression:
            return f"{min(5.0, max(0.0, p)):.3f}" if submission else f"{p:.4f}"
        return spec.labels[p]

    if submission:
        lines = ["index\tprediction", *(f"{e.index}\t{shown(p)}" for e, p in zip(examples, predictions, strict=True))]
    else:
        lines = [shown(p) for p in predictions]
    return atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"))
