"""``prepare_data``: read, validate, split and tokenize a training file (and eval file), cached."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path

from ...models.registry import lorakit_home
from ..chat import ChatTemplateError, load_chat_template, resolve_chat_template
from .cache import _cache_key, _load_cache, _save_cache
from .encode import (
    PreparedData,
    Truncation,
    _check_truncation,
    encode_classification,
    encode_conversations,
    encode_pairs,
    encode_texts,
)
from .formats import UserDataError, normalize_format, parse_columns
from .load import LabelSet, UserData, generation_prompts, load_user_data, references, whole_number_scores_note


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random ``fraction`` of ``range(n)`` held out (at least one; both parts in file order)."""
    if not 0 < fraction < 1:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {fraction}")
    count = max(1, round(n * fraction))
    if count >= n:
        raise ValueError(f"eval_fraction={fraction} of {n} examples leaves nothing to train on")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [i for i in range(n) if i not in held], sorted(held)


def _describe(data: UserData, mapping: Mapping[str, str], how: str | None = None) -> str:
    how = how or ("detected from its keys" if data.detected else "forced")
    keys = [mapping.get(k, k) for k in data.columns]
    return f"{data.path}: format {data.format} ({how}: {', '.join(keys)}), {len(data)} rows"


def prepare_data(
    data: str | os.PathLike[str],
    tokenizer,
    *,
    format: str | None = None,
    columns: str | Mapping[str, str] | None = None,
    eval_data: str | os.PathLike[str] | None = None,
    eval_fraction: float | None = None,
    seed: int = 0,
    max_length: int = 256,
    truncation: Truncation = "right",
    chat_template: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    log: Callable[[str], None] | None = print,
) -> PreparedData:
    """Read, validate, split and tokenize a user's training file (and eval file); cached.

    Everything is validated (both files) before anything is tokenized or written. ``truncation``: ``right``
    (default) keeps the prompt and cuts the end, dropping an example whose completion (or every assistant
    turn) is cut to nothing; ``left`` cuts the beginning; ``drop`` drops every example longer than
    ``max_length``. The cache lives in ``cache_dir`` (default ``$LORAKIT_HOME/data``; a run may pass its output
    folder), keyed by the files' bytes, the tokenizer and every setting here; hub datasets are not cached here
    (``datasets`` keeps the download). ``log`` gets the format and row counts first, then what was cut.
    """
    _check_truncation(truncation)
    if eval_data is not None and eval_fraction:
        raise ValueError("give eval_data or eval_fraction, not both")
    if eval_fraction is not None and eval_fraction and not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    mapping = parse_columns(columns)
    say = log or (lambda _: None)
    template_override = load_chat_template(chat_template)
    key = None
    if use_cache:
        key = _cache_key(data, eval_data, tokenizer, format=format and normalize_format(format), columns=mapping,
                         eval_fraction=eval_fraction or None, seed=seed if eval_fraction else None,
                         max_length=max_length, truncation=truncation, chat_template=template_override)
    root = Path(cache_dir).expanduser() if cache_dir is not None else lorakit_home() / "data"
    if key is not None and (root / key / "meta.json").is_file():
        prepared = _named_as_given(_load_cache(root / key), data, eval_data)
        for line in [*prepared.header, *prepared.summary()]:
            say(line)
        return prepared

    train = load_user_data(data, format=format, columns=mapping)
    header = [_describe(train, mapping)]
    say(header[-1])
    evaluation = None
    if eval_data is not None:
        evaluation = load_user_data(eval_data, format=train.format, columns=mapping)
        header.append(_describe(evaluation, mapping, "as the training file"))
        say(header[-1])
    labels = None
    if train.format == "classification":
        labels = LabelSet.from_values(train.columns["label"], train.label_kind or "str")
        if not labels.regression and labels.num_labels < 2:
            raise UserDataError(f"every training label is {labels.names[0]!r}: a classifier needs at least two "
                                "classes", train.path, key=mapping.get("label", "label"))
        if note := whole_number_scores_note(train.columns["label"], labels.kind):
            header.append(note)
            say(note)
        if evaluation is not None:
            evaluation.columns["label"] = labels.encode(evaluation, mapping.get("label", "label"))
        train.columns["label"] = labels.encode(train, mapping.get("label", "label"))
    if eval_fraction:
        keep, held = split_indices(len(train), eval_fraction, seed)
        train, evaluation = train.select(keep), train.select(held)
    template = resolve_chat_template(tokenizer, template_override) if train.format == "messages" else None

    train_samples, train_stats = _encode(tokenizer, train, max_length, truncation, template)
    eval_samples, eval_stats = (None, None) if evaluation is None else \
        _encode(tokenizer, evaluation, max_length, truncation, template)
    if not train_samples:
        raise UserDataError(f"no training examples left after truncation to max_length={max_length}", train.path)
    eval_texts = None
    if evaluation is not None and train.format in ("prompt-completion", "messages"):
        eval_texts = [(prompt, ref) for prompt, ref in zip(generation_prompts(evaluation, tokenizer, template),
                                                           references(evaluation), strict=True) if ref]
    prepared = PreparedData(train.format, train_samples, eval_samples, train_stats, eval_stats, labels, template,
                            eval_texts, str(data), None if eval_data is None else str(eval_data), max_length,
                            truncation, header=header)
    for line in prepared.summary():
        say(line)
    if key is not None:
        prepared.cache_path = _save_cache(root, key, prepared)
    return prepared


def _named_as_given(prepared: PreparedData, data: str | os.PathLike[str],
                    eval_data: str | os.PathLike[str] | None) -> PreparedData:
    """A cache entry is keyed by the files' bytes, so it may have been made from a copy under another name:
    its lines and sources name the files given now."""
    for old, new in ((prepared.source, data), (prepared.eval_source, eval_data)):
        if old and new is not None and str(new) != old:
            was, now = (str(Path(str(x)).expanduser()) for x in (old, new))
            prepared.header = [now + line[len(was):] if line.startswith(was + ":") else line
                               for line in prepared.header]
    prepared.source, prepared.eval_source = str(data), None if eval_data is None else str(eval_data)
    return prepared


def _encode(tokenizer, data: UserData, max_length: int, truncation: Truncation, template: str | None):
    c = data.columns
    if data.format == "text":
        return encode_texts(tokenizer, c["text"], max_length, truncation)
    if data.format == "prompt-completion":
        return encode_pairs(tokenizer, c["prompt"], c["completion"], max_length, truncation)
    if data.format == "messages":
        try:
            return encode_conversations(tokenizer, c["messages"], max_length, truncation, template)
        except ChatTemplateError as err:
            raise UserDataError(f"the chat template cannot render this conversation: {err.error}", data.path,
                                data.where(err.index), "messages") from None
    return encode_classification(tokenizer, c["text"], c.get("text_pair"), c["label"], max_length, truncation)
