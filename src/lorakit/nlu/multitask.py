"""One base encoder, many task adapters loaded at once: each input goes to its task's adapter.

Switching task is ``set_active_adapters``: it flips which LoRA matrices and which head each wrapped layer
uses, with no weights copied, so it costs microseconds to milliseconds, not a model load.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import torch

from ..adapters import load_adapter
from ..data.glue import GlueExample
from ..lora import set_active_adapters
from ..models import load_model
from .predict import predict_logits, to_predictions


class MultiTaskClassifier:
    """``MultiTaskClassifier("minilm-l6", {"sst2": "runs/glue/sst2-lora/adapter", ...})``."""

    def __init__(self, base: str, adapters: Mapping[str, str | os.PathLike], batch_size: int = 64) -> None:
        self.model, self.tokenizer = load_model(base, "sequence-classification")
        for task, folder in adapters.items():
            load_adapter(self.model, folder, name=task, activate=False, head_size_from_file=True)
        self.model.eval()
        self.tasks = list(adapters)
        self.batch_size = batch_size
        self.active: str | None = None

    def switch(self, task: str) -> float:
        """Make ``task``'s adapter the active one; returns the seconds it took."""
        if task not in self.tasks:
            raise KeyError(f"no adapter for task {task!r}; loaded: {', '.join(self.tasks)}")
        start = time.perf_counter()
        set_active_adapters(self.model, [task])
        self.active = task
        return time.perf_counter() - start

    def logits(self, task: str, examples: Sequence[GlueExample]) -> torch.Tensor:
        if self.active != task:
            self.switch(task)
        return predict_logits(self.model, self.tokenizer, task, examples, batch_size=self.batch_size)

    def classify(self, requests: Sequence[tuple[str, GlueExample]]) -> list[int | float]:
        """Predictions for (task, input) requests in any mix, in request order: grouped by task so each
        adapter is switched to once per call."""
        out: list[int | float | None] = [None] * len(requests)
        for task in dict.fromkeys(t for t, _ in requests):
            rows = [i for i, (t, _) in enumerate(requests) if t == task]
            preds = to_predictions(task, self.logits(task, [requests[i][1] for i in rows]))
            for i, p in zip(rows, preds, strict=True):
                out[i] = p
        return out  # type: ignore[return-value]
