"""The formats a user's file can have, the keys each needs, and the column mapping onto them.

Why apart: every other part (reading, validating, the command lines' ``--format``/``--columns``) names
formats and keys, and their errors list them the same way."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping

from ..common import DataFormatError

FORMATS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "messages": ("messages",),
    "classification": ("text", "label"),
}
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {"classification": ("text_pair",)}
KEYS = ("text", "text_pair", "prompt", "completion", "messages", "label")
_ALIASES = {"chat": "messages", "completion": "prompt-completion", "prompt-completion": "prompt-completion"}


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
            raise ValueError(f"column mapping: {key!r} is not a key lorakit reads{did_you_mean(key, KEYS)}; "
                             f"keys: {', '.join(KEYS)}")
        if not column:
            raise ValueError(f"column mapping: no column named for {key!r}")
        if key in mapping:
            raise ValueError(f"column mapping: {key!r} is mapped twice")
        mapping[key] = column
    return mapping


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a misspelled ``name``, or nothing."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
