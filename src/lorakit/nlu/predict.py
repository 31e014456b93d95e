"""Batched sentence (pair) classification and regression with an encoder: GLUE tasks and dev scoring, and a
user's own classifier (trained on their file, label names in the adapter's ``labels.json``).

Inputs are run in length order (little padding) and the outputs put back in input order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..adapters import load_adapter
from ..data.glue import GlueExample
from ..data.user import encode_classification
from ..decode.api import context_length
from ..files import atomic_write
from ..metrics.glue import glue_scores
from ..metrics.labels import read_label_names
from ..models import load_model
from ..quant import QuantMode
from ..tasks import GLUETask, get_task
from ..train.batching import ClassificationSample, collate_classification


def load_classifier(model: str, task: str, adapter: str | os.PathLike | None = None, quantize: QuantMode = "none",
                    device: torch.device | str | None = None):
    """``(model, tokenizer)`` for a GLUE task: a base with the task's head size plus an adapter folder, or a
    fully fine-tuned model folder (``adapter`` None); ``quantize``: the frozen base's (``lorakit.quant``),
    ``device``: where it will run (what ``quantize="auto"`` measures on)."""
    glue = _glue_task(task)
    net, tokenizer = load_model(model, "sequence-classification", num_labels=glue.num_labels if adapter is not None
                                else None, quantize=quantize, device=device)
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
    """Logits (rows in input order, fp32 on the CPU); the model's train/eval mode is left as it was. Inputs
    are cut to ``max_length`` tokens, or to the model's positions where it has fewer."""
    glue = _glue_task(task)
    samples = glue.encode(tokenizer, examples, min(max_length, context_length(model) or max_length))
    return batched_logits(model, tokenizer, samples, batch_size, f"predict {glue.name}", progress)


@torch.no_grad()
def batched_logits(model: nn.Module, tokenizer, samples: Sequence[ClassificationSample], batch_size: int = 64,
                   desc: str = "predict", progress: bool = False) -> torch.Tensor:
    """Logits of encoded samples, run in length order (little padding) and returned in input order."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
    device = next(model.parameters()).device
    out: torch.Tensor | None = None  # sized by the active head, which may differ from config.num_labels
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
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
    glue = _glue_task(task)
    examples = glue.examples(split, root)
    return glue_scores(glue.name, predict(model, tokenizer, glue.name, examples, **kw), [e.label for e in examples])


def write_predictions(path: str | os.PathLike, task: str, examples: Sequence[GlueExample],
                      predictions: Sequence[int | float], submission: bool = False) -> Path:
    """One prediction per input: its label name (STS-B: the score) on a line. ``submission``: GLUE's format,
    a header ``index<TAB>prediction``, then the test file's index and the label (STS-B clipped to [0, 5])."""
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


# ------------------------------------------------------------------------------- a user's own classifier


def load_user_classifier(model: str, adapter: str | os.PathLike | None = None, quantize: QuantMode = "none",
                         device: torch.device | str | None = None):
    """``(model, tokenizer, names)`` for a classifier trained on the user's own data: a base plus an adapter
    folder (its head takes the number of outputs saved in the file), or a fully fine-tuned model folder.

    ``names`` are the label names in class-id order from ``labels.json`` in the adapter (or model) folder,
    the file the server answers with; None when there is none (see :func:`output_names`).
    """
    folder = adapter if adapter is not None else (model if Path(model).expanduser().is_dir() else None)
    names = None if folder is None else read_label_names(folder, required=False)
    num_labels = None if adapter is None else (len(names) if names else None)
    net, tokenizer = load_model(model, "sequence-classification", num_labels=num_labels, quantize=quantize,
                                device=device)
    if adapter is not None:
        load_adapter(net, adapter, head_size_from_file=True)
    net.eval()
    return net, tokenizer, names


def output_names(model: nn.Module, names: Sequence[str] | None, width: int) -> list[str]:
    """What each output is called: ``names`` (checked against the head's width), else the model config's
    ``id2label`` when it holds real names, else the class ids as text."""
    if names is not None:
        if len(names) != width:
            raise ValueError(f"{len(names)} label names ({', '.join(names)}) for a classifier with {width} outputs")
        return list(names)
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    found = [id2label.get(i) for i in range(width)]
    if all(isinstance(n, str) and n for n in found) and found != [f"LABEL_{i}" for i in range(width)]:
        return [str(n) for n in found]
    return [str(i) for i in range(width)]


def predict_user_logits(model: nn.Module, tokenizer, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                        batch_size: int = 64, max_length: int = 256, truncation: str = "right",
                        progress: bool = False) -> torch.Tensor:
    """Logits for sentences (and pairs), encoded exactly as training on a user's file encodes them
    (``lorakit.data.user.encode_classification``); ``truncation`` right or left (every input gets an answer)."""
    if truncation not in ("right", "left"):
        raise ValueError(f"truncation for prediction must be right or left, got {truncation!r}")
    samples, _ = encode_classification(tokenizer, texts, pairs, [0] * len(texts), max_length, truncation)
    return batched_logits(model, tokenizer, samples, batch_size, "predict", progress)


def user_predictions(model: nn.Module, logits: torch.Tensor, names: Sequence[str] | None) -> list[str] | list[float]:
    """Label names (argmax), or the scores of a one-output (regression) head."""
    if logits.shape[-1] == 1:
        return logits[:, 0].tolist()
    shown = output_names(model, names, logits.shape[-1])
    return [shown[i] for i in logits.argmax(-1).tolist()]
