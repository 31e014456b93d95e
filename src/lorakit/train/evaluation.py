"""Validation during training: a token-weighted loss, metrics where the recipe gives them, and which
result is best so far.

The trainer runs an ``Evaluation`` every ``eval_every`` steps without knowing the task: the recipe
(``lorakit.recipes.finetune``) builds it with the validation samples, how to score classification outputs
and how to generate and score text. What is best so far is derived from the evaluations in ``log.jsonl``,
so a resumed run (whose log is cut back to its checkpoint) continues with exactly the best value and
patience an uninterrupted run has at that step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .batching import ClassificationSample, Sample, collate
from .loss import CausalLMLoss, classification_loss

# metrics where a smaller value is better; every other one is better when larger
LOWER_IS_BETTER = ("loss", "TER")


@dataclass
class Evaluation:
    """One validation pass: ``run(model, pad_id, device) -> {"loss": ..., metric: ...}``.

    ``score_outputs(outputs, labels)`` scores classification outputs (class ids, or values for a 1-output
    regression head); ``generate(model)`` decodes some validation inputs and scores the text. ``metric``
    picks the best evaluation (``best/``).
    """

    samples: Sequence[Sample] | Sequence[ClassificationSample]
    metric: str = "loss"
    batch_size: int = 8
    score_outputs: Callable[[list[float], list[float]], dict[str, float]] | None = None
    generate: Callable[[nn.Module], dict[str, float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what it is, for the log's first line

    @property
    def higher_is_better(self) -> bool:
        return self.metric not in LOWER_IS_BETTER

    def better(self, value: float, than: float | None) -> bool:
        if than is None or math.isnan(than):
            return not math.isnan(value)
        return value > than if self.higher_is_better else value < than

    def run(self, model: nn.Module, pad_id: int, device: torch.device,
            amp: torch.dtype | None = None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                results = self._loss_and_outputs(model, pad_id, device)
                if self.generate is not None:
                    results.update(self.generate(model))
        finally:
            model.train(was_training)
        if self.metric not in results:
            raise ValueError(f"eval_metric {self.metric!r} is not among this evaluation's results: "
                             f"{', '.join(results)}")
        return results

    def _batches(self) -> Iterable[list[int]]:
        order = sorted(range(len(self.samples)), key=lambda i: len(self.samples[i].input_ids))
        for start in range(0, len(order), self.batch_size):
            yield order[start:start + self.batch_size]

    def _loss_and_outputs(self, model: nn.Module, pad_id: int, device: torch.device) -> dict[str, float]:
        classify = bool(self.samples) and isinstance(self.samples[0], ClassificationSample)
        lm_loss = None if classify else CausalLMLoss(model)
        total, count = 0.0, 0
        outputs: list[float] = []
        labels: list[float] = []
        for batch in self._batches():
            inputs = {k: v.to(device) for k, v in collate([self.samples[i] for i in batch], pad_id).items()}
            if lm_loss is not None:
                summed, n = lm_loss(**inputs)
                total, count = total + summed.item(), count + int(n)
                continue
            target = inputs.pop("labels")
            logits = model(**inputs).logits.float()
            total += classification_loss(logits, target).item()
            outputs += (logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)).tolist()
            count += len(batch)
            labels += target.tolist()
        results = {"loss": total / max(count, 1)}
        if classify and self.score_outputs is not None:
            results.update(self.score_outputs(outputs, labels))
        return results


@dataclass
class BestSoFar:
    """The best evaluation so far and how many evaluations since it improved, from the log's records."""

    value: float | None = None
    step: int | None = None
    since: int = 0

    @classmethod
    def from_log(cls, records: Iterable[dict[str, Any]], evaluation: Evaluation) -> BestSoFar:
        best = cls()
        for record in records:
            if "eval" in record:
                best.update(record["step"], record["eval"][evaluation.metric], evaluation)
        return best

    def update(self, step: int, value: float, evaluation: Evaluation) -> bool:
        """Record an evaluation; whether it is the new best."""
        if evaluation.better(value, self.value):
            self.value, self.step, self.since = value, step, 0
            return True
        self.since += 1
        return False
