"""The LoRA paper's datasets read from their official distribution files under a data root (``--data`` or
``$LORAKIT_DATA``): data-to-text (E2E NLG, WebNLG 2017, DART) and GLUE."""

from __future__ import annotations

import os
from collections.abc import Callable

from .common import (
    DATA_ENV,
    DataFormatError,
    DataRootError,
    Example,
    count_references,
    data_root,
    linearize_triples,
    training_pairs,
)
from .dart import DART_BASE_URL, download_dart, load_dart, read_dart_json
from .download import DownloadError, fetch_file
from .e2e import E2E_BASE_URL, download_e2e, linearize_e2e, load_e2e, parse_mr, read_e2e_csv
from .glue import GLUE_TASKS, GlueExample, GlueSpec, glue_spec, load_glue, read_glue_tsv
from .webnlg import (
    SEEN_CATEGORIES,
    UNSEEN_CATEGORIES,
    WEBNLG_BASE_URL,
    download_webnlg,
    load_webnlg,
    read_webnlg_xml,
)

LOADERS: dict[str, Callable[..., list[Example]]] = {"e2e": load_e2e, "webnlg": load_webnlg, "dart": load_dart}


def load_nlg(name: str, split: str, root: str | os.PathLike[str] | None = None, **kwargs) -> list[Example]:
    """``load_<name>(split, root, **kwargs)`` by dataset name, for command lines and configs."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(LOADERS)}")
    return LOADERS[name](split, root, **kwargs)


__all__ = [
    "DART_BASE_URL",
    "DATA_ENV",
    "E2E_BASE_URL",
    "GLUE_TASKS",
    "LOADERS",
    "SEEN_CATEGORIES",
    "UNSEEN_CATEGORIES",
    "WEBNLG_BASE_URL",
    "DataFormatError",
    "DataRootError",
    "DownloadError",
    "Example",
    "GlueExample",
    "GlueSpec",
    "count_references",
    "data_root",
    "download_dart",
    "download_e2e",
    "download_webnlg",
    "fetch_file",
    "glue_spec",
    "linearize_e2e",
    "linearize_triples",
    "load_dart",
    "load_e2e",
    "load_glue",
    "load_nlg",
    "load_webnlg",
    "parse_mr",
    "read_dart_json",
    "read_e2e_csv",
    "read_glue_tsv",
    "read_webnlg_xml",
    "training_pairs",
]
