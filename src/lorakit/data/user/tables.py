"""Reading a file (JSON/JSONL here, CSV/TSV/Parquet/hub through ``datasets``) into rows or columns.

Why apart: how bytes become rows is independent of what the rows mean; JSON is parsed here so errors
name the line and nothing is silently retyped (``datasets`` unifies a column's schema)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...models.registry import download_allowed
from ..chat import type_name
from ..common import read_text, split_lines
from .formats import UserDataError

_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
               ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}


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
                raise UserDataError(f"expected a JSON object, got {type_name(item)}", path, f"item {i + 1}")
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
            raise UserDataError(f"expected a JSON object, got {type_name(row)}", path, f"line {number}")
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


