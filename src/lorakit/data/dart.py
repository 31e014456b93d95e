"""DART v1.1.1 (Nan et al. 2021): open-domain triple sets → texts, in the official JSON.

Each file is a JSON list of ``{"tripleset": [[s, r, o], ...], "subtree_was_extended": bool,
"annotations": [{"source": ..., "text": ...}]}``; one Example per entry, its annotations the references.
Input linearised as microsoft/LoRA ``format_converting_dart.py``: ``s : r : o`` joined by `` | ``, with
the relation lower-cased (``JOINED`` → ``joined``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import (
    DataFormatError,
    Example,
    check_split,
    data_root,
    dataset_file,
    linearize_triples,
    official_test_file,
    read_text,
)
from .download import DEFAULT_TIMEOUT, fetch_files

DART_DIR = "dart"
DART_BASE_URL = "https://raw.githubusercontent.com/Yale-LILY/dart/master/data/v1.1.1/"
DART_FILES = {split: f"dart-v1.1.1-full-{split}.json" for split in ("train", "dev", "test")}
DART_TEST_INPUTS_ONLY = "dart-v1.1.1-full-test-inputs.json"  # test entries without "annotations"
SPLITS = ("train", "dev", "test")


def read_dart_json(path: str | os.PathLike[str]) -> list[Example]:
    """All entries of one DART JSON file; DataFormatError names the file and the line or entry index."""
    path = Path(path)
    text = read_text(path)  # not UTF-8: an error naming the line (a BOM is dropped)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"invalid JSON: {err.msg}", path, f"line {err.lineno}, column {err.colno}") from None
    if not isinstance(data, list):
        raise DataFormatError(f"expected a JSON list of entries, found {type(data).__name__}", path)
    return [_entry(entry, path, index) for index, entry in enumerate(data)]


def _entry(entry: Any, path: Path, index: int) -> Example:
    def fail(message: str) -> DataFormatError:
        return DataFormatError(message, path, f"entry {index}")

    if not isinstance(entry, dict):
        raise fail(f"expected an object, found {type(entry).__name__}")
    if "tripleset" not in entry:
        raise fail("no 'tripleset'")
    tripleset = entry["tripleset"]
    if not isinstance(tripleset, list) or not tripleset:
        raise fail("'tripleset' must be a non-empty list")
    triples = []
    for t in tripleset:
        if not (isinstance(t, list) and len(t) == 3 and all(isinstance(x, str) for x in t)):
            raise fail(f"triple is not [subject, relation, object] strings: {t!r}")
        triples.append(tuple(x.strip() for x in t))
    annotations = entry.get("annotations", [])
    if not isinstance(annotations, list):
        raise fail("'annotations' must be a list")
    refs, sources = [], []
    for a in annotations:
        if not (isinstance(a, dict) and isinstance(a.get("text"), str)):
            raise fail(f"annotation without a 'text' string: {a!r}")
        refs.append(a["text"].strip())
        sources.append(a.get("source"))
    meta = {
        "triples": tuple(triples),
        "subtree_was_extended": entry.get("subtree_was_extended"),
        "annotation_sources": tuple(sources),
    }
    return Example(linearize_triples(triples, lowercase_relation=True), tuple(refs), meta)


def load_dart(split: str, root: str | os.PathLike[str] | None = None) -> list[Example]:
    """DART ``split`` ("train", "dev", "test") from ``<root>/dart/dart-v1.1.1-full-<split>.json`` (test: or the
    inputs-only ``dart-v1.1.1-full-test-inputs.json``, whose examples have no references)."""
    check_split(split, SPLITS)
    hint = "get it with lorakit.data.download_dart"
    if split == "test":
        path = official_test_file(root, DART_DIR, DART_FILES["test"], DART_TEST_INPUTS_ONLY, hint=hint)
    else:
        path = dataset_file(root, DART_DIR, DART_FILES[split], hint=hint)
    return read_dart_json(path)


def download_dart(
    dest: str | os.PathLike[str] | None = None,
    base_url: str = DART_BASE_URL,
    *,
    splits: Sequence[str] = SPLITS,
    overwrite: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Path]:
    """Fetch the official DART v1.1.1 JSON files into ``dest`` (default ``<data root>/dart``)."""
    folder = Path(dest) if dest is not None else data_root() / DART_DIR
    for split in splits:
        check_split(split, SPLITS)
    return fetch_files(base_url, folder, [DART_FILES[s] for s in splits], validate=read_dart_json,
                       overwrite=overwrite, timeout=timeout)
