"""A classifier's label names in id order, read from ``labels.json`` in its adapter folder.

Why here (and not beside the model code): ``lorakit evaluate`` maps class-id predictions to names without
importing torch, and ``lorakit predict`` and the server must agree on one file and one layout: a JSON list of
names, index = class id (``lorakit.serve.registry`` reads the same file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

LABELS_NAME = "labels.json"


def labels_path(source: str | os.PathLike[str]) -> Path:
    """``source`` itself when it is a file, else ``source/labels.json`` (an adapter or model folder)."""
    path = Path(source).expanduser()
    return path / LABELS_NAME if path.is_dir() else path


def read_label_names(source: str | os.PathLike[str], *, required: bool = True) -> list[str] | None:
    """Names in id order from a ``labels.json`` (or a folder holding one): a JSON list of strings, or an
    ``{"0": "neg", "1": "pos"}`` id-to-name object (``id2label``'s layout) covering ids 0..n-1.

    ``required=False`` returns None when the folder has no ``labels.json``; a file that is there but
    malformed is always an error naming it.
    """
    path = labels_path(source)
    if not path.is_file():
        if not required:
            return None
        raise FileNotFoundError(f"{path}: no such labels file (a JSON list of label names in class-id order)")
    try:
        value = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON list of label names: {err}") from None
    if isinstance(value, dict):
        value = _from_id2label(value, path)
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x for x in value):
        raise ValueError(f"{path}: expected a non-empty JSON list of label names (strings) in class-id order")
    if len(set(value)) != len(value):
        raise ValueError(f"{path}: a label name appears twice: {_first_duplicate(value)!r}")
    return value


def _from_id2label(mapping: dict, path: Path) -> list[str]:
    mapping = mapping.get("id2label", mapping)
    if not isinstance(mapping, dict):
        raise ValueError(f"{path}: 'id2label' must map class ids to names")
    try:
        ids = {int(k): v for k, v in mapping.items()}
    except ValueError:
        raise ValueError(f"{path}: expected class ids (0, 1, ...) as keys, got {sorted(mapping)!r}") from None
    if sorted(ids) != list(range(len(ids))):
        raise ValueError(f"{path}: class ids must be 0..{len(ids) - 1}, got {sorted(ids)}")
    return [ids[i] for i in range(len(ids))]


def _first_duplicate(names: Sequence[str]) -> str:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return ""
