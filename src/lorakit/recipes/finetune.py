"""Fine-tuning, composed: a ``TrainConfig`` becomes a model with its adapter, training samples, a loss and
an evaluation, which the ``Trainer`` runs.

Why a recipe: the trainer stays a loop that knows nothing of datasets, files or model registries; a new
source of data is one more setup function here, not a change to the loop (as torchtune's recipes and
litgpt's ``setup -> fit``). Two sources today: a built-in task (E2E, WebNLG, DART, GLUE) and the user's
own file (``lorakit.data.user``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import lora
from ..data.chat import CHAT_TEMPLATE_NAME
from ..data.user import PreparedData, prepare_data
from ..decode import generate, preset
from ..metrics import GENERATION_METRICS, LABEL_METRICS, require_metrics
from ..metrics.evaluate import REGRESSION_METRICS, classification_scores, text_scores
from ..metrics.glue import glue_metric
from ..metrics.labels import LABELS_NAME
from ..models import load_model, load_tokenizer
from ..tasks import Task, get_task, head_modules
from ..train import CausalLMLoss, SequenceClassificationLoss, TrainConfig, Trainer
from ..train.batching import ClassificationSample, Sample
from ..train.evaluation import Evaluation


@dataclass
class Parts:
    """What a run trains, built from its config; ``trainer()`` hands it to the loop."""

    config: TrainConfig
    model: nn.Module
    tokenizer: object
    samples: list[Sample] | list[ClassificationSample]
    loss: nn.Module
    title: str
    evaluation: Evaluation | None = None
    result_files: dict[str, bytes] = field(default_factory=dict)
    task: Task | None = None  # a built-in task
    prepared: PreparedData | None = None  # the user's data

    @property
    def model_kind(self) -> str:
        if self.task is not None:
            return self.task.model_kind
        assert self.prepared is not None
        return self.prepared.model_kind

    def validation_prompts(self, limit: int) -> tuple[list[str], list[str | None]]:
        """Up to ``limit`` validation inputs as the model reads them, with a reference each."""
        if self.task is not None:
            examples = self.task.examples("dev", self.config.data)[:limit]
            return [self.task.prompt(ex.source) for ex in examples], [(ex.references or [None])[0]
                                                                      for ex in examples]
        assert self.prepared is not None
        texts = (self.prepared.eval_texts or [])[:limit]
        return [prompt for prompt, _ in texts], [ref for _, ref in texts]

    def trainer(self) -> Trainer:
        return Trainer(self.config, self.model, self.tokenizer, self.samples, self.loss,
                       evaluation=self.evaluation, result_files=self.result_files, title=self.title)


def build_trainer(config: TrainConfig, model: nn.Module | None = None, tokenizer=None) -> Trainer:
    """``setup(config).trainer()``: the usual way to train from a config (``Trainer(...).fit()`` next)."""
    return setup(config, model, tokenizer).trainer()


def setup(config: TrainConfig, model: nn.Module | None = None, tokenizer=None) -> Parts:
    """Seed, then build the model (loaded unless given, with ``tokenizer``), its adapter, the samples, the
    loss and the evaluation."""
    if config.base_quantize == "int8" and torch.cuda.is_available():  # before loading anything
        raise ValueError("quantize int8 is a CPU kernel (PyTorch's fbgemm) and training runs on this machine's GPU: "
                         "use bf16 or nf4, or hide the GPU (CUDA_VISIBLE_DEVICES=) to train on the CPU")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    if config.user_data:
        return _setup_user_data(config, model, tokenizer)
    return _setup_task(config, model, tokenizer)


def add_lora(config: TrainConfig, model: nn.Module, head: list[str] | None) -> nn.Module:
    """The adapter the config describes (or the whole model trainable with ``full_finetune``)."""
    if config.full_finetune:
        model.requires_grad_(True)
        return model
    lora_config = lora.LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                  target_modules=config.target_modules, use_rslora=config.rslora,
                                  modules_to_save=head, task_type="SEQ_CLS" if head else "CAUSAL_LM",
                                  base_model_name_or_path=config.model)
    return lora.add_adapter(model, lora_config, name=config.name)


def _require_eval_metrics(config: TrainConfig, what: str, classifies: bool) -> None:
    """Before the model loads, not at the first evaluation: the metrics extra's part that evaluating ``what``
    scores with (labels, or generated text with ``eval_generate``)."""
    if config.eval_every and classifies:
        require_metrics(f"evaluating {what} while training", LABEL_METRICS)
    elif config.eval_every and config.eval_generate:
        require_metrics("--eval-generate", GENERATION_METRICS)


def subset(items: list, size: int | None, seed: int) -> list:
    """A seeded random ``size`` of ``items`` (all of them when ``size`` is None or larger)."""
    if size is None or size >= len(items):
        return items
    return random.Random(seed).sample(items, size)


def _loss(model: nn.Module, kind: str, config: TrainConfig) -> nn.Module:
    if kind == "causal-lm":
        return CausalLMLoss(model, config.label_smoothing)
    return SequenceClassificationLoss(model)


# ------------------------------------------------------------------------------------------ built-in tasks


def _setup_task(config: TrainConfig, model: nn.Module | None, tokenizer) -> Parts:
    task = get_task(config.task or "e2e")
    _require_eval_metrics(config, task.name, task.model_kind == "sequence-classification")
    if model is None:
        model, tokenizer = load_model(config.model, task.model_kind, num_labels=task.num_labels,
                                      quantize=config.base_quantize)
    model = add_lora(config, model, task.modules_to_save(model))
    samples = subset(task.train_samples(tokenizer, config.data, config.max_length), config.max_train_examples,
                     config.seed)
    evaluation = _task_evaluation(config, task, tokenizer) if config.eval_every else None
    return Parts(config, model, tokenizer, samples, task.loss(model, config.label_smoothing), config.name,
                 evaluation, task=task)


def _task_evaluation(config: TrainConfig, task: Task, tokenizer) -> Evaluation:
    """The dev split: its loss, GLUE's metrics, or greedy outputs on ``eval_generate`` inputs scored with
    the task's metrics."""
    samples = subset(task.eval_samples(tokenizer, config.data, config.max_length), config.max_eval_examples,
                     config.seed)
    if task.model_kind == "sequence-classification":
        return Evaluation(samples, config.eval_metric or task.spec.metrics[0], config.batch_size,
                          score_outputs=task.score)
    generate_scores = None
    if config.eval_generate:
        examples = [ex for ex in task.examples("dev", config.data) if ex.references][:config.eval_generate]
        generate_scores = _generation_scorer(tokenizer, [task.prompt(ex.source) for ex in examples],
                                             [list(ex.references) for ex in examples], task.score,
                                             config.batch_size)
    return Evaluation(samples, config.eval_metric or ("BLEU" if generate_scores else "loss"), config.batch_size,
                      generate=generate_scores)


def _generation_scorer(tokenizer, prompts: Sequence[str], refs: Sequence[Sequence[str]],
                       score: Callable[[Sequence[str], Sequence[Sequence[str]]], dict[str, float]],
                       batch_size: int) -> Callable[[nn.Module], dict[str, float]]:
    def run(model: nn.Module) -> dict[str, float]:
        outputs = generate(model, tokenizer, prompts, preset("greedy"), batch_size=batch_size, progress=False)
        return score(outputs, refs)
    return run


# ------------------------------------------------------------------------------------------ the user's data


def _setup_user_data(config: TrainConfig, model: nn.Module | None, tokenizer) -> Parts:
    assert config.data is not None
    if tokenizer is None:
        tokenizer = load_tokenizer(config.model)
    prepared = prepare_data(config.data, tokenizer, format=config.format, columns=config.columns,
                            eval_data=config.eval_data, eval_fraction=config.eval_fraction, seed=config.seed,
                            max_length=config.max_length, truncation=config.truncation,
                            chat_template=config.chat_template)
    if config.eval_every and prepared.eval is None:
        raise ValueError("eval_every needs validation data: give eval_data FILE or eval_fraction (e.g. 0.05)")
    _require_eval_metrics(config, "a labelled file", prepared.labels is not None)
    kind = prepared.model_kind
    if model is None:
        model, tokenizer = load_model(config.model, kind, num_labels=prepared.num_labels,
                                      quantize=config.base_quantize)
    files: dict[str, bytes] = {}
    head = None
    if prepared.labels is not None:
        head = head_modules(model)
        if prepared.id2label is not None:
            model.config.id2label, model.config.label2id = prepared.id2label, prepared.label2id
            files[LABELS_NAME] = (json.dumps(list(prepared.labels.names), ensure_ascii=False) + "\n").encode()
    if config.chat_template is not None and prepared.chat_template is not None:
        files[CHAT_TEMPLATE_NAME] = prepared.chat_template.encode()  # what serving must render with
    model = add_lora(config, model, head)
    samples = subset(prepared.train, config.max_train_examples, config.seed)
    evaluation = _user_evaluation(config, prepared, tokenizer) if config.eval_every else None
    title = f"{Path(config.data).name} ({prepared.format})"
    return Parts(config, model, tokenizer, samples, _loss(model, kind, config), title, evaluation, files,
                 prepared=prepared)


def _user_evaluation(config: TrainConfig, prepared: PreparedData, tokenizer) -> Evaluation:
    """The eval file (or held-out fraction): loss; accuracy, macro F1 and Matthews (regression: Pearson and
    Spearman); or greedy outputs on ``eval_generate`` examples with references, scored with BLEU, ROUGE-L
    and exact match."""
    assert prepared.eval is not None
    samples = subset(prepared.eval, config.max_eval_examples, config.seed)
    labels = prepared.labels
    if labels is not None:
        if labels.regression:
            def score(outputs: list[float], gold: list[float]) -> dict[str, float]:
                return {name: glue_metric(name, outputs, gold) for name in REGRESSION_METRICS}
        else:
            def score(outputs: list[float], gold: list[float]) -> dict[str, float]:
                return classification_scores([labels.names[int(i)] for i in outputs],
                                             [labels.names[int(i)] for i in gold], labels.names)
        default = "pearson" if labels.regression else "accuracy"
        return Evaluation(samples, config.eval_metric or default, config.batch_size, score_outputs=score)
    generate_scores = None
    texts = (prepared.eval_texts or [])[:config.eval_generate]
    if texts:
        generate_scores = _generation_scorer(tokenizer, [prompt for prompt, _ in texts], [[r] for _, r in texts],
                                             lambda h, r: text_scores(h, [x[0] for x in r]), config.batch_size)
    return Evaluation(samples, config.eval_metric or ("BLEU" if generate_scores else "loss"), config.batch_size,
                      generate=generate_scores)
