"""Reading a file (JSON/JSONL here, CSV/TSV/Parquet/hub through ``datasets``) into rows or columns.

Why apart: how bytes become rows is independent of what the rows mean; JSON is parsed here so errors
name the line and nothing is silently retyped (``datasets`` unifies a column's schema). CSV and TSV are
read by ``datasets`` (pandas) after a check of their shape here: pandas would take a row with one field
more than the header as an index column and shift every column by one, silently."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...models.registry import download_allowed
from ..chat import type_name
from ..common import invalid_unicode, read_text, split_lines
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
    if path.is_dir():
        raise UserDataError("a directory, not a data file (give one file)", path)
    if kind is not None or text_source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{text_source}: no such data file")
    return _read_hub(text_source)


# a JSON escape that may stand for half of a surrogate pair (a lone one is not text: it cannot be tokenized)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse(text: str, path: Path, where: str | None) -> Any:
    """One JSON value; ``UserDataError`` naming ``where`` (None: a whole file, the parser's line) for
    malformed JSON, nesting too deep to parse and numbers too long to convert (Python refuses integers over
    4,300 digits)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}" if where is None else where
        raise UserDataError(f"malformed JSON: {err.msg} (column {err.colno})", path, where) from None
    except RecursionError:
        raise UserDataError("JSON nested too deeply to read", path, where) from None
    except ValueError as err:
        raise UserDataError(f"unreadable JSON: {err}", path, where) from None


def _check_unicode(rows: list[dict[str, Any]], table: _Table) -> None:
    """``UserDataError`` naming the row and key of the first text holding a lone surrogate (``"\\ud800"``)."""
    for i, row in enumerate(rows):
        for key, value in row.items():
            if invalid_unicode([key, value]) is not None:
                raise UserDataError("invalid unicode (a lone surrogate such as \\ud800): not text",
                                    table.path, table.where(i), key)


def _read_json(path: Path, kind: str) -> _Table:
    text = read_text(path)  # not UTF-8: an error naming the line
    if kind == "json" and text.lstrip().startswith("["):
        items = _parse(text, path, None)
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise UserDataError(f"expected a JSON object, got {type_name(item)}", path, f"item {i + 1}")
        table = _Table(str(path), list(items[0]) if items else [], "item", rows=items)
    else:
        table = _read_json_lines(path, text)
    if _SURROGATE_ESCAPE.search(text):  # rare: only then is every text checked
        _check_unicode(table.rows, table)
    return table


def _read_json_lines(path: Path, text: str) -> _Table:
    lines = split_lines(text)  # "\n" only: never str.splitlines
    numbers = [n for n, line in enumerate(lines, start=1) if line.strip()]
    try:  # one parse of the whole file is 4x faster than a parse per line; errors are found line by line below
        rows = json.loads(f"[{','.join(lines[n - 1] for n in numbers)}]")
    except (ValueError, RecursionError):
        rows = None
    if rows is not None and len(rows) == len(numbers) and all(isinstance(row, dict) for row in rows):
        return _Table(str(path), list(rows[0]) if rows else [], "line", rows=rows, numbers=numbers)
    rows = []
    for number in numbers:
        row = _parse(lines[number - 1], path, f"line {number}")
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
    """The header's column names, after checking that every row has as many fields as the header and that
    no name repeats (``UserDataError`` naming the line)."""
    text = read_text(path)
    lines = split_lines(text)
    if not lines or not lines[0].strip():
        raise UserDataError("empty file (expected a header row)", path, "line 1")
    if kind == "tsv":  # unquoted, as read below: a record is a line
        records = ((n, line.split("\t")) for n, line in enumerate(lines, start=1))
    else:
        records = _csv_records(text, path)
    header: list[str] = []
    rows = 0
    for number, fields in records:
        if not header:
            header = fields
            seen: set[str] = set()
            for column, name in enumerate(header, start=1):
                if not name.strip():  # pandas' to_csv writes its index under an empty name
                    raise UserDataError(f"column {column} of the header has no name (a pandas index? write the file "
                                        "with index=False, or name the column)", path, "line 1")
                if name in seen:
                    raise UserDataError(f"column {name!r} appears twice in the header", path, "line 1")
                seen.add(name)
        elif fields != [""] and fields:  # blank lines are skipped, as pandas does
            if len(fields) != len(header):
                raise UserDataError(f"{len(fields)} field{'s' * (len(fields) != 1)} where the header has "
                                    f"{len(header)} ({', '.join(header)})", path, f"line {number}")
            rows += 1
    if not rows:
        raise UserDataError("no examples (the file has its header row only)", path)
    return header


def _csv_records(text: str, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each CSV record; a quoted field may span lines."""
    reader = csv.reader(io.StringIO(text, newline=""))
    start = 1
    try:
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1
    except csv.Error as err:
        raise UserDataError(f"malformed CSV: {err}", path, f"line {reader.line_num}") from None


def _read_hub(name: str) -> _Table:
    repo, _, split = name.partition(":")
    if not download_allowed():
        raise FileNotFoundError(f"{name}: no such file; reading the Hugging Face hub dataset {repo!r} needs "
                                "LORAKIT_ALLOW_DOWNLOAD=1 (or download it and pass the file)")
    datasets = _quiet_datasets()
    ds = datasets.load_dataset(repo, split=split or "train")
    columns = ds.to_dict()
    return _Table(name, list(columns), "row", columns=columns)


