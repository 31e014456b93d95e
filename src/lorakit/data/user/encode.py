"""Examples to token ids: text, prompt-completion pairs, chat, classification; the truncation policy.

Why apart: the loss masks and truncation rules are what make the generic path equal the built-in tasks'
(``tokenize_pairs``, the GLUE encoders), and they are tested on their own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Literal

from ...train.batching import IGNORE, ClassificationSample, Sample
from ..chat import encode_chats, resolve_chat_template
from .load import LabelSet

TRUNCATION = ("right", "left", "drop")
Truncation = Literal["right", "left", "drop"]


@dataclass
class SplitStats:
    """What tokenizing one split did: reported, saved in the cache, checked by tests."""

    rows: int = 0
    samples: int = 0
    too_long: int = 0  # longer than max_length
    truncated: int = 0  # cut and kept
    dropped: int = 0  # too long, dropped by truncation="drop"
    nothing_to_learn: int = 0  # dropped: the cut left no completion / assistant token to learn

    def report(self, name: str, max_length: int, truncation: str) -> str:
        text = f"{name}: {self.rows} rows -> {self.samples} samples"
        if self.too_long:
            parts = []
            if self.truncated:
                parts.append(f"{self.truncated} cut on the {truncation}")
            if self.dropped:
                parts.append(f"{self.dropped} dropped")
            if self.nothing_to_learn:
                parts.append(f"{self.nothing_to_learn} dropped (nothing left to learn after the cut)")
            text += f"; {self.too_long} longer than max_length={max_length}: {', '.join(parts)}"
        return text


def _check_truncation(truncation: str) -> None:
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION)}, got {truncation!r}")


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]``, through the Rust backend directly when the
    tokenizer has one: the Python wrapper's per-row conversion costs more than the tokenization itself.
    The first rows are checked against the wrapper, which is used instead on any difference."""
    texts = list(texts)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    ids = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]  # (encode_batch_fast: slower here)
    head = texts[:8]
    if head and tokenizer(head, add_special_tokens=False)["input_ids"] != ids[:len(head)]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    return ids


def _learns(labels: list[int]) -> bool:
    """``Sample.target_tokens > 0`` at C speed (a label at position 0 is never predicted)."""
    return len(labels) - labels.count(IGNORE) - (bool(labels) and labels[0] != IGNORE) > 0


def _fit(ids: list[int], labels: list[int], max_length: int, truncation: str, stats: SplitStats) -> Sample | None:
    """Cut to ``max_length`` by the policy; None (counted) when dropped or nothing is left to learn."""
    cut = len(ids) > max_length
    if cut:
        stats.too_long += 1
        if truncation == "drop":
            stats.dropped += 1
            return None
        if truncation == "right":
            ids, labels = ids[:max_length], labels[:max_length]
        else:
            ids, labels = ids[len(ids) - max_length:], labels[len(labels) - max_length:]
    if not _learns(labels):
        stats.nothing_to_learn += 1
        return None
    stats.truncated += cut
    return Sample(ids, labels)


def _eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no EOS token to end a text or completion with")
    return tokenizer.eos_token_id


def encode_texts(tokenizer, texts: Sequence[str], max_length: int, truncation: Truncation = "right"
                 ) -> tuple[list[Sample], SplitStats]:
    """Plain LM: every token and the EOS appended carry loss."""
    _check_truncation(truncation)
    eos = _eos(tokenizer)
    stats = SplitStats(rows=len(texts))
    samples = []
    for ids in token_ids(tokenizer, texts):
        ids.append(eos)
        if (sample := _fit(ids, ids, max_length, truncation, stats)) is not None:
            samples.append(sample)
    stats.samples = len(samples)
    return samples, stats


def encode_pairs(tokenizer, prompts: Sequence[str], completions: Sequence[str], max_length: int,
                 truncation: Truncation = "right") -> tuple[list[Sample], SplitStats]:
    """Prompt + completion + EOS, tokenized apart and joined as ``tokenize_pairs`` does; with ``right`` (the
    default) the result is exactly ``tokenize_pairs``'s, examples cut to no completion token dropped."""
    _check_truncation(truncation)
    eos = _eos(tokenizer)
    unique = list(dict.fromkeys(chain(prompts, completions)))  # prompts repeat (one row per reference)
    encoded = dict(zip(unique, token_ids(tokenizer, unique), strict=True))
    stats = SplitStats(rows=len(prompts))
    samples = []
    for prompt_text, completion_text in zip(prompts, completions, strict=True):
        prompt, target = encoded[prompt_text], encoded[completion_text]
        ids = [*prompt, *target, eos]
        labels = [IGNORE] * len(prompt)
        labels += target
        labels.append(eos)
        if len(ids) <= max_length and len(ids) > max(1, len(prompt)):  # the common case, without _fit's scan
            samples.append(Sample(ids, labels))
        elif (sample := _fit(ids, labels, max_length, truncation, stats)) is not None:
            samples.append(sample)
    stats.samples = len(samples)
    return samples, stats


def encode_conversations(tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]], max_length: int,
                         truncation: Truncation = "right", chat_template: str | None = None
                         ) -> tuple[list[Sample], SplitStats]:
    """Chat: loss on every assistant content and its end-of-turn token (``lorakit.data.chat``)."""
    _check_truncation(truncation)
    template = resolve_chat_template(tokenizer, chat_template)
    stats = SplitStats(rows=len(conversations))
    samples = []
    for ids, labels in encode_chats(tokenizer, conversations, template):
        if (sample := _fit(ids, labels, max_length, truncation, stats)) is not None:
            samples.append(sample)
    stats.samples = len(samples)
    return samples, stats


def encode_classification(tokenizer, texts: Sequence[str], pairs: Sequence[str] | None,
                          labels: Sequence[int | float], max_length: int, truncation: Truncation = "right"
                          ) -> tuple[list[ClassificationSample], SplitStats]:
    """Sentence (pair) + label, with the tokenizer's special tokens, as the GLUE tasks encode them."""
    _check_truncation(truncation)
    texts, pairs = list(texts), None if pairs is None else list(pairs)
    stats = SplitStats(rows=len(texts))
    enc = tokenizer(texts, pairs)
    ids, types = list(enc["input_ids"]), enc.get("token_type_ids")
    types = None if types is None else list(types)
    long = [i for i, row in enumerate(ids) if len(row) > max_length]
    stats.too_long = len(long)
    keep = set(range(len(texts)))
    if long and truncation == "drop":
        keep -= set(long)
        stats.dropped = len(long)
    elif long:
        side = tokenizer.truncation_side
        tokenizer.truncation_side = truncation
        try:
            cut = tokenizer([texts[i] for i in long], None if pairs is None else [pairs[i] for i in long],
                            truncation=True, max_length=max_length)
        finally:
            tokenizer.truncation_side = side
        for n, i in enumerate(long):
            ids[i] = cut["input_ids"][n]
            if types is not None:
                types[i] = cut["token_type_ids"][n]
        stats.truncated = len(long)
    samples = [ClassificationSample(ids[i], None if types is None else types[i], labels[i])
               for i in range(len(texts)) if i in keep]
    stats.samples = len(samples)
    return samples, stats


# ----------------------------------------------------------------------------------- prepared data


@dataclass
class PreparedData:
    """Token ids ready for ``lorakit.train.batching``, and what the trainer, CLI and server need to know."""

    format: str
    train: list[Sample] | list[ClassificationSample]
    eval: list[Sample] | list[ClassificationSample] | None
    train_stats: SplitStats
    eval_stats: SplitStats | None
    labels: LabelSet | None = None  # classification
    chat_template: str | None = None  # the template conversations were rendered with (save it with the adapter)
    # the eval split's (generation prompt, reference) pairs, in file order, for examples that have a reference
    # (prompt-completion and messages): what evaluation during training decodes and scores
    eval_texts: list[tuple[str, str]] | None = None
    source: str = ""
    eval_source: str | None = None
    max_length: int = 0
    truncation: str = "right"
    cache_path: Path | None = None
    from_cache: bool = False
    header: list[str] = field(default_factory=list)  # what was said first: files, formats, row counts

    @property
    def model_kind(self) -> str:
        return "sequence-classification" if self.format == "classification" else "causal-lm"

    @property
    def num_labels(self) -> int | None:
        return None if self.labels is None else self.labels.num_labels

    @property
    def id2label(self) -> dict[int, str] | None:
        return None if self.labels is None else self.labels.id2label

    @property
    def label2id(self) -> dict[str, int] | None:
        return None if self.labels is None else self.labels.label2id

    def summary(self) -> list[str]:
        lines = [self.train_stats.report("train", self.max_length, self.truncation)]
        if self.eval_stats is not None:
            lines.append(self.eval_stats.report("eval", self.max_length, self.truncation))
        if self.labels is not None:
            lines.append("regression (1 output)" if self.labels.regression
                         else f"{self.labels.num_labels} classes: {', '.join(self.labels.names)}")
        return lines
