"""Pieces shared by the data-to-text loaders: the example type, the error type, where the data lives."""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_ENV = "LORAKIT_DATA"


@dataclass(frozen=True)
class Example:
    """One input with all its references: evaluation scores a hypothesis against every reference at once.

    ``source`` is the linearised input the model reads; ``references`` is empty where the file has no
    texts (E2E ``testset.csv``). ``meta`` holds what a caller may filter or report on (it takes no part
    in equality or hashing).
    """

    source: str
    references: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class DataFormatError(ValueError):
    """A data file is not in the format its loader expects; the message names the file and the place."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, where: str | None = None):
        self.path = None if path is None else Path(path)
        self.where = where
        self.message = message
        prefix = ", ".join(str(p) for p in (path, where) if p is not None)
        super().__init__(f"{prefix}: {message}" if prefix else message)


def invalid_unicode(value: Any) -> str | None:
    """The first string in ``value`` (nested lists and dicts included) that is not valid unicode (a lone
    surrogate such as ``"\\ud800"``, which JSON can carry but nothing can tokenize or encode), if any."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        for item in value:
            bad = invalid_unicode(item)
            if bad is not None:
                return bad
    return None


def read_text(path: str | os.PathLike[str]) -> str:
    """A UTF-8 text file's contents (a leading byte-order mark dropped, as spreadsheet tools write one).

    Bytes that are not UTF-8 (a Latin-1 or binary file) raise ``DataFormatError`` naming the file, line and
    column, where Python's codec error names neither the file nor a position one could find in an editor.
    """
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise DataFormatError(f"not UTF-8 text (byte 0x{data[err.start]:02x} at column {column})", path,
                              f"line {line}") from None


def split_lines(text: str) -> list[str]:
    """Lines ended by ``\\n`` or ``\\r\\n`` only, the last one's end optional.

    Not ``str.splitlines()``: it also splits on form feeds, U+2028, U+0085 and other characters that can sit
    inside a line of model output or data, which shifts every later line against its neighbour file.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a UTF-8 text file (see ``read_text`` and ``split_lines``)."""
    return split_lines(read_text(path))


class DataRootError(RuntimeError):
    """No data folder was given: raised early so a run does not fail deep inside a loader."""


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``explicit`` (e.g. a ``--data`` flag) if given, else ``$LORAKIT_DATA``."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    raise DataRootError(
        f"no data folder given: set {DATA_ENV}=/path/to/data or pass --data /path/to/data "
        "(the folder that holds e2e/, webnlg2017/, dart/)"
    )


def dataset_file(root: str | os.PathLike[str] | None, *parts: str, hint: str = "") -> Path:
    """``<root>/<parts...>``, or a FileNotFoundError that says which file and how to get it."""
    path = data_root(root).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found{': ' + hint if hint else ''}")
    return path


def official_test_file(root: str | os.PathLike[str] | None, folder: str, with_refs: str, inputs_only: str, *,
              hint: str = "") -> Path:
    """The official test file with references if a user has it, else the inputs-only file these shared tasks
    give out (references held back: outputs are scored elsewhere); FileNotFoundError naming both."""
    base = data_root(root) / folder
    for name in (with_refs, inputs_only):
        if (base / name).exists():
            return base / name
    raise FileNotFoundError(f"neither {base / with_refs} nor {base / inputs_only} found{': ' + hint if hint else ''}")


def check_split(split: str, allowed: Sequence[str]) -> None:
    """Reject an unknown split name up front, listing the known ones."""
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(allowed)}")


def linearize_triples(triples: Iterable[Sequence[str]], *, lowercase_relation: bool = False) -> str:
    """``s1 : r1 : o1 | s2 : r2 : o2``: the LoRA NLG converters' format for WebNLG and DART.

    DART's converter lower-cases the relation (``lowercase_relation=True``); WebNLG's does not.
    """
    parts = []
    for subj, rel, obj in triples:
        parts.append(f"{subj} : {rel.lower() if lowercase_relation else rel} : {obj}")
    return " | ".join(parts)


def training_pairs(examples: Iterable[Example]) -> list[tuple[str, str]]:
    """One ``(source, target)`` pair per reference, in order: fine-tuning sees every reference."""
    return [(ex.source, ref) for ex in examples for ref in ex.references]


def count_references(examples: Iterable[Example]) -> int:
    """Total number of references (texts) over ``examples``."""
    return sum(len(ex.references) for ex in examples)
