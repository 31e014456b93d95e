"""Tasks tie a dataset to how the model sees it and learns it: adding one is a short declaration here.

Data-to-text (E2E, WebNLG, DART) trains a causal LM on prompt -> text; GLUE trains a sequence
classification (or regression) head. The trainer asks a task for its model head, samples and loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .data import Example, load_dart, load_e2e, load_webnlg, training_pairs
from .data.glue import GLUE_TASKS, GlueExample, GlueSpec, load_glue
from .metrics.glue import glue_scores
from .train.batching import ClassificationSample, Sample, tokenize_pairs
from .train.loss import CausalLMLoss, SequenceClassificationLoss

# Names Hugging Face gives the classification head (BERT/RoBERTa/DeBERTa "classifier", GPT-2/Llama "score").
HEAD_NAMES = ("classifier", "score")


@dataclass(frozen=True)
class NLGTask:
    """Data-to-text: the model reads the linearised input and a newline, then writes the text."""

    name: str
    load: Callable[..., list[Example]]
    description: str
    model_kind: Literal["causal-lm"] = "causal-lm"
    num_labels: None = None

    def prompt(self, source: str) -> str:
        return f"{source}\n"

    def examples(self, split: str, root: str | os.PathLike | None = None) -> list[Example]:
        return self.load(split, root)

    def train_pairs(self, root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
        """(prompt, target): one pair per reference."""
        return [(self.prompt(source), target) for source, target in training_pairs(self.examples("train", root))]

    def train_samples(self, tokenizer, root: str | os.PathLike | None, max_length: int) -> list[Sample]:
        return tokenize_pairs(tokenizer, self.train_pairs(root), max_length)

    def eval_samples(self, tokenizer, root: str | os.PathLike | None, max_length: int) -> list[Sample]:
        """The dev split as the validation loss sees it: one sample per reference, as in training."""
        pairs = [(self.prompt(s), t) for s, t in training_pairs(self.examples("dev", root))]
        return tokenize_pairs(tokenizer, pairs, max_length)

    def score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        """The task's own metrics, those cheap enough to run during training (see ``training_scores``)."""
        from .metrics.training import training_scores

        return training_scores(self.name, hypotheses, references)

    def loss(self, model: nn.Module, label_smoothing: float = 0.0) -> nn.Module:
        return CausalLMLoss(model, label_smoothing)

    def modules_to_save(self, model: nn.Module) -> list[str] | None:
        return None


@dataclass(frozen=True)
class GLUETask:
    """A GLUE task: a classification head (or a one-output regression head for STS-B) on an encoder, trained
    fully and saved inside the adapter (PEFT's ``modules_to_save``)."""

    name: str
    spec: GlueSpec
    model_kind: Literal["sequence-classification"] = "sequence-classification"

    @property
    def description(self) -> str:
        return f"GLUE {self.spec.folder} ({', '.join(self.spec.metrics)})"

    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    def examples(self, split: str, root: str | os.PathLike | None = None) -> list[GlueExample]:
        return load_glue(self.name, split, root)

    def encode(self, tokenizer, examples: Sequence[GlueExample], max_length: int) -> list[ClassificationSample]:
        """Token ids the way the encoder was pre-trained on pairs ([CLS] a [SEP] b [SEP] for BERT)."""
        pairs = [e.text_b for e in examples] if examples and examples[0].text_b is not None else None
        enc = tokenizer([e.text_a for e in examples], pairs, truncation=True, max_length=max_length)
        types = enc.get("token_type_ids")
        return [ClassificationSample(ids, None if types is None else types[i],
                                     0 if e.label is None else e.label)  # test files: a placeholder, never learned
                for i, (ids, e) in enumerate(zip(enc["input_ids"], examples, strict=True))]

    def train_samples(self, tokenizer, root: str | os.PathLike | None, max_length: int
                      ) -> list[ClassificationSample]:
        return self.encode(tokenizer, self.examples("train", root), max_length)

    def eval_samples(self, tokenizer, root: str | os.PathLike | None, max_length: int
                     ) -> list[ClassificationSample]:
        return self.encode(tokenizer, self.examples("dev", root), max_length)

    def score(self, outputs: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
        """GLUE's official metrics, headline first: class ids (STS-B: scores) against the labels."""
        return glue_scores(self.name, outputs, labels)

    def loss(self, model: nn.Module, label_smoothing: float = 0.0) -> nn.Module:
        return SequenceClassificationLoss(model)

    def modules_to_save(self, model: nn.Module) -> list[str]:
        return head_modules(model)


def head_modules(model: nn.Module) -> list[str]:
    """A classification head is freshly initialised: it must be trained whole and saved with the adapter."""
    names = [n for n, _ in model.named_children() if n in HEAD_NAMES]
    if not names:
        raise ValueError(f"{type(model).__name__} has no classification head named {' or '.join(HEAD_NAMES)}")
    return names


Task = NLGTask | GLUETask

TASKS: dict[str, Task] = {
    "e2e": NLGTask("e2e", load_e2e, "E2E NLG Challenge (restaurant meaning representations)"),
    "webnlg": NLGTask("webnlg", load_webnlg, "WebNLG 2017 (DBpedia triples)"),
    "dart": NLGTask("dart", load_dart, "DART (open-domain triples)"),
    **{name: GLUETask(name, spec) for name, spec in GLUE_TASKS.items()},
}


def get_task(name: str) -> Task:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[key]
