"""Validated examples (``UserData``): keys extracted, types and values checked, labels typed, label maps,
and what ``generate``/``evaluate`` read from them (prompts, references).

Why: a mistake in row 48,113 must be an error naming the file, the line and the key before a run starts."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..chat import MessageError, check_messages, render_generation_prompt, type_name
from .formats import (
    FORMATS,
    OPTIONAL_KEYS,
    UserDataError,
    detect_format,
    did_you_mean,
    formats_help,
    normalize_format,
    parse_columns,
)
from .tables import _read_table, _Table


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
                                f"{did_you_mean(column, table.names)}", table.path, first, column)
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
                                    f"{did_you_mean(column, table.names)}; {formats_help()}", table.path, where, column)
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
                                    f"{did_you_mean(column, rows[i])}; {formats_help()}",
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
                fail(i, key, f"{what} must be a string, got {type_name(value)}")
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


INTEGER_TEXT = re.compile(r"[+-]?\d+")  # a label (or prediction) written as a class id


def _labels(data: UserData, table: _Table, key: str, optional: bool) -> tuple[list[Any], str]:
    """Labels as str / int / float (regression); mixed kinds are an error at the first row that differs."""
    values: list[Any] = []
    kinds: list[str] = []
    for i, raw in enumerate(data.columns["label"]):
        if raw is None and optional:
            values.append(None)
            kinds.append("none")
            continue
        try:
            value, kind = _label_value(raw, table.strings)
        except ValueError as err:  # Python reads no integer of over 4,300 digits
            raise UserDataError(f"unreadable label: {err}", data.path, data.where(i), key) from None
        if kind == "nonfinite":
            raise UserDataError(f"label must be a finite number, got {raw}", data.path, data.where(i), key)
        if kind == "bad":
            raise UserDataError(f"label must be a string, an integer or a number, got {type_name(raw)}",
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
        return raw, ("float" if math.isfinite(raw) else "nonfinite")
    if isinstance(raw, str):
        value = raw.strip()
        if strings:  # CSV: "1" is an integer class, "0.75" a regression score
            if INTEGER_TEXT.fullmatch(value):
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


def whole_number_scores_note(values: Iterable[Any], kind: str, limit: int = 10) -> str | None:
    """A warning for regression labels that look like classes: every score a whole number, few of them, and at
    least one written with a decimal point (a pandas export of a column with a gap writes 1 as 1.0)."""
    seen = {v for v in values if v is not None}
    if kind != "float" or len(seen) > limit or any(not float(v).is_integer() for v in seen):
        return None
    shown = ", ".join(f"{v:g}" for v in sorted(seen))
    return (f"note: every label is a whole number ({shown}) but some are written with a decimal point, so they "
            f"are read as regression scores (1 output); write them as integers or names to train {len(seen)} "
            "classes")


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


# -------------------------------------------------------------------------------------- generation


def generation_prompts(data: UserData, tokenizer=None, chat_template: str | os.PathLike[str] | None = None
                       ) -> list[str]:
    """What ``generate`` continues, one per example: the ``prompt``, or the conversation up to its last user
    turn rendered with the chat template's generation prompt (a final assistant turn is the reference)."""
    if data.format == "prompt-completion":
        return list(data.columns["prompt"])
    if data.format != "messages":
        raise ValueError(f"format {data.format} has no prompts to generate from")
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
