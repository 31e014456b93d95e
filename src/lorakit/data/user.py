"""A user's own data file, from disk to token ids: read, detect the format, validate, tokenize, cache.

Why: training on one's own JSONL/CSV/Parquet file must not need Python, and a mistake in row 48,113 must
be an error naming the file, the line and the key before a run starts, not a crash an hour in.

Formats (detected from the keys, or forced with ``format=``); ``columns=`` maps other names onto these keys
(``{"prompt": "question"}`` or the command-line string ``prompt=question,completion=answer``):

- ``text``: plain language modelling, loss on every token and the EOS appended;
- ``prompt-completion``: ``prompt`` + ``completion``, loss on the completion and its EOS only, joined
  exactly as the built-in data-to-text tasks join them (``lorakit.train.batching.tokenize_pairs``);
- ``messages``: OpenAI chat (``system``/``user``/``assistant``), rendered with the chat template, loss on
  every assistant content and its end-of-turn token (see ``lorakit.data.chat``);
- ``classification``: ``text`` (+ ``text_pair``) + ``label``; string or integer labels are classes
  (``id2label`` sorted), float labels mean regression (one output).

JSON and JSONL are parsed here, line by line, so errors name the line and nothing is silently changed
(``datasets`` unifies a column's schema: a key missing in one row becomes null, an int becomes a float);
CSV/TSV, Parquet and hub datasets are read through Hugging Face ``datasets`` (CSV cells as strings, so
``007`` stays text; TSV unquoted, like GLUE's files). Tokenized samples are cached as safetensors, keyed
by the files' content, the tokenizer and every setting, so a rerun or resume does not tokenize again.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..models.registry import download_allowed, lorakit_home
from ..train.batching import IGNORE, ClassificationSample, Sample
from .chat import (
    ChatTemplateError,
    MessageError,
    check_messages,
    encode_chats,
    load_chat_template,
    resolve_chat_template,
)
from .common import DataFormatError, read_text, split_lines

__all__ = [
    "FORMATS",
    "KEYS",
    "TRUNCATION",
    "LabelSet",
    "PreparedData",
    "SplitStats",
    "UserData",
    "UserDataError",
    "detect_format",
    "encode_classification",
    "encode_conversations",
    "encode_pairs",
    "encode_texts",
    "generation_prompts",
    "load_user_data",
    "parse_columns",
    "prepare_data",
    "references",
    "split_indices",
    "token_ids",
]

FORMATS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "messages": ("messages",),
    "classification": ("text", "label"),
}
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {"classification": ("text_pair",)}
KEYS = ("text", "text_pair", "prompt", "completion", "messages", "label")
_ALIASES = {"chat": "messages", "completion": "prompt-completion", "prompt-completion": "prompt-completion"}
TRUNCATION = ("right", "left", "drop")
Truncation = Literal["right", "left", "drop"]
CACHE_VERSION = 1
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
               ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}


class UserDataError(DataFormatError):
    """Bad input in a user's data file: the message names the file, the line (JSONL) or row (CSV,
    Parquet) and the key. ``line``/``key`` are kept for callers that answer in their own schema."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, where: str | None = None,
                 key: str | None = None):
        place = ", ".join(p for p in (where, None if key is None else f"key {key!r}") if p)
        super().__init__(message, path, place or None)
        self.line = where
        self.key = key


def formats_help() -> str:
    """The accepted formats and their keys, for error messages."""
    parts = [f"{name} ({', '.join(keys)}{''.join(f' [+ {k}]' for k in OPTIONAL_KEYS.get(name, ()))})"
             for name, keys in FORMATS.items()]
    return "accepted formats and their keys: " + "; ".join(parts)


def normalize_format(name: str) -> str:
    key = name.strip().lower().replace("_", "-").replace("+", "-").replace("/", "-")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown format {name!r}; {formats_help()}")
    return key


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"prompt=question,completion=answer"`` (or a dict) -> ``{"prompt": "question", ...}``: our key on the
    left, the file's column on the right."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        pairs = []
        for part in spec.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ValueError(f"column mapping {part.strip()!r} is not KEY=COLUMN (e.g. prompt=question)")
            key, column = part.split("=", 1)
            pairs.append((key.strip(), column.strip()))
    mapping: dict[str, str] = {}
    for key, column in pairs:
        if key not in KEYS:
            raise ValueError(f"column mapping: {key!r} is not a key lorakit reads{_suggest(key, KEYS)}; "
                             f"keys: {', '.join(KEYS)}")
        if not column:
            raise ValueError(f"column mapping: no column named for {key!r}")
        if key in mapping:
            raise ValueError(f"column mapping: {key!r} is mapped twice")
        mapping[key] = column
    return mapping


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------------------------- reading


@dataclass
class _Table:
    """A file as read: JSON rows as dicts, or columns from ``datasets``; ``names`` are the keys seen."""

    path: str
    names: list[str]
    unit: str  # "line" (JSONL, JSON parse errors), "item" (JSON array), "row" (CSV, Parquet, hub)
    rows: list[dict[str, Any]] | None = None
    columns: dict[str, list[Any]] | None = None
    numbers: list[int] | None = None  # JSONL line numbers (blank lines are skipped)
    strings: bool = False  # every cell is a string (CSV/TSV): labels are parsed from text
    header_line: bool = False

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(next(iter(self.columns.values()), []))

    def where(self, i: int) -> str:
        number = self.numbers[i] if self.numbers is not None else i + 1
        return f"{self.unit} {number}"


def _kind(source: str) -> str | None:
    name = source.lower()
    for ext, kind in _EXTENSIONS.items():
        if name.endswith(ext):
            return kind
    return None


def _read_table(source: str | os.PathLike[str]) -> _Table:
    text_source = str(source)
    path = Path(text_source).expanduser()
    kind = _kind(text_source)
    if path.is_file():
        if kind is None:
            raise UserDataError(f"unknown file type; expected one of {', '.join(sorted(_EXTENSIONS))}", path)
        if kind in ("jsonl", "json"):
            return _read_json(path, kind)
        return _read_with_datasets(path, kind)
    if path.is_dir() or kind is not None or text_source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{text_source}: no such data file")
    return _read_hub(text_source)


def _read_json(path: Path, kind: str) -> _Table:
    text = read_text(path)  # not UTF-8: an error naming the line
    if kind == "json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserDataError(f"malformed JSON: {err.msg} (column {err.colno})", path, f"line {err.lineno}") from None
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise UserDataError(f"expected a JSON object, got {_type(item)}", path, f"item {i + 1}")
        return _Table(str(path), list(items[0]) if items else [], "item", rows=items)
    lines = split_lines(text)  # "\n" only: never str.splitlines
    numbers = [n for n, line in enumerate(lines, start=1) if line.strip()]
    try:  # one parse of the whole file is 4x faster than a parse per line; errors are found line by line below
        rows = json.loads(f"[{','.join(lines[n - 1] for n in numbers)}]")
    except json.JSONDecodeError:
        rows = None
    if rows is not None and len(rows) == len(numbers) and all(isinstance(row, dict) for row in rows):
        return _Table(str(path), list(rows[0]) if rows else [], "line", rows=rows, numbers=numbers)
    rows = []
    for number in numbers:
        try:
            row = json.loads(lines[number - 1])
        except json.JSONDecodeError as err:
            raise UserDataError(f"malformed JSON: {err.msg} (column {err.colno})", path, f"line {number}") from None
        if not isinstance(row, dict):
            raise UserDataError(f"expected a JSON object, got {_type(row)}", path, f"line {number}")
        rows.append(row)
    return _Table(str(path), list(rows[0]) if rows else [], "line", rows=rows, numbers=numbers)


def _quiet_datasets():
    """``datasets`` imported late (1.5 s, and JSONL never needs it) with its progress bars off."""
    import datasets

    datasets.disable_progress_bars()
    return datasets


def _read_with_datasets(path: Path, kind: str) -> _Table:
    datasets = _quiet_datasets()
    kwargs: dict[str, Any] = {}
    if kind in ("csv", "tsv"):
        header = _csv_header(path, kind)
        # every cell a string, nothing turned into NaN ("NA" is text), TSV unquoted (GLUE's quotes are text)
        kwargs = {"features": datasets.Features({name: datasets.Value("string") for name in header}),
                  "keep_default_na": False, "na_filter": False}
        if kind == "tsv":
            kwargs.update(sep="\t", quoting=csv.QUOTE_NONE)
    builder = "csv" if kind in ("csv", "tsv") else "parquet"
    with tempfile.TemporaryDirectory(prefix="lorakit-datasets-") as cache:  # lorakit caches tokens itself
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                       keep_in_memory=True, **kwargs)
        except Exception as err:  # pandas/pyarrow parse errors name the line but not the file
            raise UserDataError(f"cannot read {kind.upper()}: {err}", path) from None
        columns = ds.to_dict()
    return _Table(str(path), list(columns), "row", columns=columns, strings=kind in ("csv", "tsv"),
                  header_line=kind in ("csv", "tsv"))


def _csv_header(path: Path, kind: str) -> list[str]:
    first = split_lines(read_text(path))[:1]
    if not first or not first[0].strip():
        raise UserDataError("empty file (expected a header row)", path, "line 1")
    if kind == "tsv":
        return first[0].split("\t")
    return next(csv.reader([first[0]]))


def _read_hub(name: str) -> _Table:
    repo, _, split = name.partition(":")
    if not download_allowed():
        raise FileNotFoundError(f"{name}: no such file; reading the Hugging Face hub dataset {repo!r} needs "
                                "LORAKIT_ALLOW_DOWNLOAD=1 (or download it and pass the file)")
    datasets = _quiet_datasets()
    ds = datasets.load_dataset(repo, split=split or "train")
    columns = ds.to_dict()
    return _Table(name, list(columns), "row", columns=columns)


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ------------------------------------------------------------------------------------- validated rows


@dataclass
class UserData:
    """A validated file: per our key (``prompt``, ``messages``, ``label``...), one value per example.

    ``numbers`` gives each example's line (JSONL) or row; ``where(i)`` says it for error messages.
    """

    path: str
    format: str
    columns: dict[str, list[Any]]
    numbers: list[int]
    unit: str
    detected: bool = True
    label_kind: str | None = None  # "str" | "int" | "float" (regression), classification only

    def __len__(self) -> int:
        return len(self.numbers)

    def where(self, i: int) -> str:
        return f"{self.unit} {self.numbers[i]}"

    def select(self, indices: Sequence[int]) -> UserData:
        return UserData(self.path, self.format, {k: [v[i] for i in indices] for k, v in self.columns.items()},
                        [self.numbers[i] for i in indices], self.unit, self.detected, self.label_kind)


def detect_format(names: Iterable[str], columns: Mapping[str, str] | None = None, *,
                  require_targets: bool = True, path: str | None = None, where: str | None = None) -> str:
    """The format the keys ``names`` (after the column mapping) describe, or an error listing the formats."""
    mapping = dict(columns or {})
    names = list(names)
    have = {key for key in KEYS if mapping.get(key, key) in names}
    if "messages" in have:
        return "messages"
    if {"prompt", "completion"} <= have or ("prompt" in have and not require_targets):
        return "prompt-completion"
    if {"text", "label"} <= have:
        return "classification"
    if "text" in have:
        return "text"
    hints = [f"{n!r} -> {m[0]!r}" for n in names
             if (m := difflib.get_close_matches(n, [k for k in KEYS if k not in have], n=1, cutoff=0.6))]
    hint = f"; did you mean {', '.join(hints)}? (or map names with columns=, e.g. prompt=question)" if hints else \
        "; map other names with columns=, e.g. prompt=question,completion=answer"
    raise UserDataError(f"cannot tell the format from the keys {', '.join(names) or '(none)'}: {formats_help()}"
                        f"{hint}", path, where)


def load_user_data(source: str | os.PathLike[str], *, format: str | None = None,
                   columns: str | Mapping[str, str] | None = None, require_targets: bool = True) -> UserData:
    """Read and validate a file, or a hub dataset id (``owner/name`` or ``owner/name:split``, only with
    ``LORAKIT_ALLOW_DOWNLOAD=1``); ``UserDataError`` names the file, line (or row) and key.

    ``require_targets=False`` reads inputs for ``generate``/``predict``: ``completion``/``label`` optional,
    conversations without an assistant turn allowed.
    """
    table = _read_table(source)
    mapping = parse_columns(columns)
    if not len(table):
        raise UserDataError("no examples", table.path)
    first = table.where(0) if table.rows is not None else ("line 1" if table.header_line else None)
    for key, column in mapping.items():
        if column not in table.names and key != "text_pair":  # an optional key may be absent from row 1
            raise UserDataError(f"no such column for {key}={column} (columns: {', '.join(table.names)})"
                                f"{_suggest(column, table.names)}", table.path, first, column)
    fmt = normalize_format(format) if format else detect_format(table.names, mapping,
                                                                require_targets=require_targets,
                                                                path=table.path, where=first)
    required = list(FORMATS[fmt])
    optional = list(OPTIONAL_KEYS.get(fmt, ()))
    if not require_targets:
        for target in ("completion", "label"):
            if target in required:
                required.remove(target)
                optional.append(target)
    values = _extract(table, fmt, mapping, required, optional)
    data = UserData(table.path, fmt, values, table.numbers or list(range(1, len(table) + 1)), table.unit,
                    detected=format is None)
    _validate(data, table, mapping, require_targets)
    return data


def _extract(table: _Table, fmt: str, mapping: Mapping[str, str], required: Sequence[str],
             optional: Sequence[str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    if table.columns is not None:
        for key in (*required, *optional):
            column = mapping.get(key, key)
            if column in table.columns:
                out[key] = table.columns[column]
            elif key in required:
                where = "line 1" if table.header_line else None
                raise UserDataError(f"format {fmt} needs column {column!r}; columns: {', '.join(table.names)}"
                                    f"{_suggest(column, table.names)}; {formats_help()}", table.path, where, column)
        return out
    rows = table.rows or []
    for key in (*required, *optional):
        column = mapping.get(key, key)
        if key in required:
            try:
                out[key] = [row[column] for row in rows]
            except KeyError:
                i = next(i for i, row in enumerate(rows) if column not in row)
                raise UserDataError(f"missing key (format {fmt}; keys here: {', '.join(rows[i]) or '(none)'})"
                                    f"{_suggest(column, rows[i])}; {formats_help()}",
                                    table.path, table.where(i), column) from None
        elif any(column in row for row in rows):
            out[key] = [row.get(column) for row in rows]
    return out


def _validate(data: UserData, table: _Table, mapping: Mapping[str, str], require_targets: bool) -> None:
    def fail(i: int, key: str, message: str) -> None:
        raise UserDataError(message, data.path, data.where(i), mapping.get(key, key))

    def strings(key: str, *, nonempty: bool, what: str, optional: bool = False) -> None:
        for i, value in enumerate(data.columns.get(key, ())):
            if value is None and optional:
                continue
            if not isinstance(value, str):
                fail(i, key, f"{what} must be a string, got {_type(value)}")
            if nonempty and not value.strip():
                fail(i, key, f"empty {what}")

    fmt = data.format
    if fmt == "text":
        strings("text", nonempty=True, what="text")
    elif fmt == "prompt-completion":
        strings("prompt", nonempty=False, what="prompt")
        strings("completion", nonempty=True, what="completion", optional=not require_targets)
    elif fmt == "messages":
        key = mapping.get("messages", "messages")
        checked = []
        for i, messages in enumerate(data.columns["messages"]):
            if isinstance(messages, str) and table.strings:  # a CSV cell holding the JSON list
                try:
                    messages = json.loads(messages)
                except json.JSONDecodeError as err:
                    fail(i, "messages", f"malformed JSON in the cell: {err.msg}")
            try:
                checked.append(check_messages(messages, require_assistant=require_targets, key=key))
            except MessageError as err:
                raise UserDataError(err.message, data.path, data.where(i), err.key) from None
        data.columns["messages"] = checked
    else:
        strings("text", nonempty=False, what="text")
        strings("text_pair", nonempty=False, what="text_pair")  # once present, in every row
        if "label" in data.columns:
            data.columns["label"], data.label_kind = _labels(data, table, mapping.get("label", "label"),
                                                             optional=not require_targets)


_INT = re.compile(r"[+-]?\d+")


def _labels(data: UserData, table: _Table, key: str, optional: bool) -> tuple[list[Any], str]:
    """Labels as str / int / float (regression); mixed kinds are an error at the first row that differs."""
    values: list[Any] = []
    kinds: list[str] = []
    for i, raw in enumerate(data.columns["label"]):
        if raw is None and optional:
            values.append(None)
            kinds.append("none")
            continue
        value, kind = _label_value(raw, table.strings)
        if kind == "bad":
            raise UserDataError(f"label must be a string, an integer or a number, got {_type(raw)}",
                                data.path, data.where(i), key)
        if kind == "str" and not value:
            raise UserDataError("empty label", data.path, data.where(i), key)
        values.append(value)
        kinds.append(kind)
    seen = [k for k in kinds if k != "none"]
    if not seen:
        return values, "str"
    if "str" in seen and len(set(seen)) > 1:
        first = seen[0]
        i = next(i for i, k in enumerate(kinds) if k not in ("none", first))
        j = kinds.index(first)
        odd = "a number" if kinds[i] != "str" else "a string"
        raise UserDataError(f"label {values[i]!r} is {odd} but {data.where(j)}'s label {values[j]!r} is "
                            f"{'a string' if first == 'str' else 'a number'}: classes are all strings or all "
                            "integers; float labels mean regression", data.path, data.where(i), key)
    if "float" in seen:
        return [None if v is None else float(v) for v in values], "float"
    return values, seen[0]


def _label_value(raw: Any, strings: bool) -> tuple[Any, str]:
    if isinstance(raw, bool):
        return raw, "bad"
    if isinstance(raw, int):
        return raw, "int"
    if isinstance(raw, float):
        return raw, ("float" if math.isfinite(raw) else "bad")
    if isinstance(raw, str):
        value = raw.strip()
        if strings:  # CSV: "1" is an integer class, "0.75" a regression score
            if _INT.fullmatch(value):
                return int(value), "int"
            try:
                number = float(value)
            except ValueError:
                return value, "str"
            if math.isfinite(number):
                return number, "float"
        return value, "str"
    return raw, "bad"


# ----------------------------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelSet:
    """Class names in id order (sorted: numbers numerically, strings by code point), or regression."""

    kind: str  # "str" | "int" | "float"
    names: tuple[str, ...] = ()

    @classmethod
    def from_values(cls, values: Iterable[Any], kind: str) -> LabelSet:
        if kind == "float":
            return cls("float")
        return cls(kind, tuple(str(v) for v in sorted({v for v in values if v is not None})))

    @property
    def regression(self) -> bool:
        return self.kind == "float"

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.names)

    @property
    def id2label(self) -> dict[int, str] | None:
        return None if self.regression else dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int] | None:
        return None if self.regression else {name: i for i, name in enumerate(self.names)}

    def encode(self, data: UserData, key: str = "label") -> list[int | float]:
        """Class ids (or scores); a label not among the classes is an error naming the row."""
        values = data.columns["label"]
        if self.regression:
            if data.label_kind != "float" and data.label_kind != "int":
                i = next(i for i, v in enumerate(values) if not isinstance(v, int | float))
                raise UserDataError(f"label {values[i]!r} is not a number (the training labels are regression "
                                    "scores)", data.path, data.where(i), key)
            return [float(v) for v in values]
        if data.label_kind == "float":
            i = next(i for i, v in enumerate(values) if isinstance(v, float))
            raise UserDataError(f"float label {values[i]!r} in a classification file (the training labels are "
                                f"classes: {', '.join(self.names)})", data.path, data.where(i), key)
        ids = self.label2id or {}
        out: list[int | float] = []
        for i, value in enumerate(values):
            label = ids.get(str(value))
            if label is None:
                raise UserDataError(f"label {value!r} never seen in training (labels: {', '.join(self.names)})",
                                    data.path, data.where(i), key)
            out.append(label)
        return out


# ---------------------------------------------------------------------------------------- tokenizing


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


# ------------------------------------------------------------------------------------------ preparing


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


def _describe(data: UserData, mapping: Mapping[str, str]) -> str:
    how = "detected from its keys" if data.detected else "forced"
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
        prepared = _load_cache(root / key)
        for line in [*prepared.header, *prepared.summary()]:
            say(line)
        return prepared

    train = load_user_data(data, format=format, columns=mapping)
    header = [_describe(train, mapping)]
    say(header[-1])
    evaluation = None
    if eval_data is not None:
        evaluation = load_user_data(eval_data, format=train.format, columns=mapping)
        header.append(_describe(evaluation, mapping))
        say(header[-1])
    labels = None
    if train.format == "classification":
        labels = LabelSet.from_values(train.columns["label"], train.label_kind or "str")
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
    prepared = PreparedData(train.format, train_samples, eval_samples, train_stats, eval_stats, labels, template,
                            str(data), None if eval_data is None else str(eval_data), max_length, truncation,
                            header=header)
    for line in prepared.summary():
        say(line)
    if key is not None:
        prepared.cache_path = _save_cache(root, key, prepared)
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


# -------------------------------------------------------------------------------------- generation


def generation_prompts(data: UserData, tokenizer=None, chat_template: str | os.PathLike[str] | None = None
                       ) -> list[str]:
    """What ``generate`` continues, one per example: the ``prompt``, or the conversation up to its last user
    turn rendered with the chat template's generation prompt (a final assistant turn is the reference)."""
    if data.format == "prompt-completion":
        return list(data.columns["prompt"])
    if data.format != "messages":
        raise ValueError(f"format {data.format} has no prompts to generate from")
    from .chat import render_generation_prompt

    out = []
    for i, messages in enumerate(data.columns["messages"]):
        head = messages[:-1] if messages[-1]["role"] == "assistant" else messages
        try:
            out.append(render_generation_prompt(tokenizer, head, chat_template=chat_template))
        except MessageError as err:
            raise UserDataError(err.message, data.path, data.where(i), err.key) from None
    return out


def references(data: UserData) -> list[str | None]:
    """The expected output per example: ``completion``, or a conversation's final assistant content."""
    if data.format == "prompt-completion":
        return list(data.columns.get("completion") or [None] * len(data))
    if data.format == "messages":
        return [m[-1]["content"] if m[-1]["role"] == "assistant" else None for m in data.columns["messages"]]
    raise ValueError(f"format {data.format} has no text references")


# -------------------------------------------------------------------------------------------- cache


def _file_digest(source: str | os.PathLike[str]) -> str:
    path = Path(source).expanduser()
    if not path.is_file():
        return f"hub:{source}"  # a hub id: what it holds can change, so this never hits (see _cache_key)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Everything about a tokenizer that changes token ids or the chat rendering, hashed."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {"special": tokenizer.special_tokens_map, "ids": tokenizer.all_special_ids,
             "template": getattr(tokenizer, "chat_template", None), "eos": tokenizer.eos_token_id,
             "truncation_side": tokenizer.truncation_side}
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _cache_key(data, eval_data, tokenizer, **settings: Any) -> str | None:
    train = _file_digest(data)
    evaluation = None if eval_data is None else _file_digest(eval_data)
    if train.startswith("hub:") or (evaluation or "").startswith("hub:"):
        return None
    parts = {"version": CACHE_VERSION, "train": train, "eval": evaluation,
             "tokenizer": tokenizer_fingerprint(tokenizer), **settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _arrays(samples: Sequence[Sample] | Sequence[ClassificationSample]) -> dict[str, np.ndarray]:
    def flat(rows: Iterable[list[int]]) -> np.ndarray:
        return np.array(list(chain.from_iterable(rows)), dtype=np.int32)

    lengths = np.array([len(s.input_ids) for s in samples], dtype=np.int64)
    out = {"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
           "input_ids": flat(s.input_ids for s in samples)}
    if samples and isinstance(samples[0], ClassificationSample):
        regression = isinstance(samples[0].label, float)
        out["label"] = np.array([s.label for s in samples], dtype=np.float64 if regression else np.int64)
        if samples[0].token_type_ids is not None:
            out["token_type_ids"] = flat(s.token_type_ids for s in samples)
    else:
        out["labels"] = flat(s.labels for s in samples)
    return out


def _samples(arrays: Mapping[str, np.ndarray], classification: bool) -> list:
    bounds = arrays["offsets"].tolist()
    ids = arrays["input_ids"].tolist()
    spans = list(pairwise(bounds))
    if not classification:
        labels = arrays["labels"].tolist()
        return [Sample(ids[a:b], labels[a:b]) for a, b in spans]
    types = arrays["token_type_ids"].tolist() if "token_type_ids" in arrays else None
    label = arrays["label"].tolist()
    return [ClassificationSample(ids[a:b], None if types is None else types[a:b], label[n])
            for n, (a, b) in enumerate(spans)]


def _save_cache(root: Path, key: str, prepared: PreparedData) -> Path | None:
    """Written to a temporary folder and renamed, so a killed run never leaves a half cache behind."""
    from safetensors.numpy import save_file

    final = root / key
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    try:
        splits = {"train": prepared.train, **({"eval": prepared.eval} if prepared.eval is not None else {})}
        for name, samples in splits.items():
            if samples:
                save_file(_arrays(samples), str(tmp / f"{name}.safetensors"))
        meta = {
            "version": CACHE_VERSION, "format": prepared.format, "source": prepared.source,
            "eval_source": prepared.eval_source, "max_length": prepared.max_length,
            "truncation": prepared.truncation, "chat_template": prepared.chat_template,
            "labels": None if prepared.labels is None else {"kind": prepared.labels.kind,
                                                            "names": list(prepared.labels.names)},
            "train_stats": vars(prepared.train_stats),
            "eval_stats": None if prepared.eval_stats is None else vars(prepared.eval_stats),
            "eval": prepared.eval is not None, "header": prepared.header,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(final)
        except OSError:  # another process wrote the same key first: its cache is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _load_cache(folder: Path) -> PreparedData:
    from safetensors.numpy import load_file

    meta = json.loads((folder / "meta.json").read_text())
    classification = meta["format"] == "classification"

    def split(name: str) -> list:
        path = folder / f"{name}.safetensors"
        return _samples(load_file(str(path)), classification) if path.is_file() else []

    labels = None if meta["labels"] is None else LabelSet(meta["labels"]["kind"], tuple(meta["labels"]["names"]))
    prepared = PreparedData(
        meta["format"], split("train"), split("eval") if meta["eval"] else None,
        SplitStats(**meta["train_stats"]), None if meta["eval_stats"] is None else SplitStats(**meta["eval_stats"]),
        labels, meta["chat_template"], meta["source"], meta["eval_source"], meta["max_length"], meta["truncation"],
        cache_path=folder, from_cache=True, header=[*meta["header"], f"tokenized samples read from the cache {folder}"])
    return prepared
