"""E2E NLG Challenge (Novikova et al. 2017): restaurant meaning representations → texts.

Files are the official CSVs: ``trainset.csv`` / ``devset.csv`` / ``testset_w_refs.csv`` with columns
``mr,ref`` (one row per reference), and ``testset.csv`` with a single ``MR`` column (inputs only).

Linearisation follows the data shipped with microsoft/LoRA ``examples/NLG/data/e2e`` (taken over from
Li & Liang's prefix-tuning): ``name[The Vaults], eatType[pub], priceRange[more than £30]`` becomes
``name : The Vaults | Type : pub | price : more than £30`` — attributes in MR order, ``key : value``
joined by `` | ``, with ``eatType``/``priceRange``/``familyFriendly`` shown as ``Type``/``price``/
``family friendly``. (LoRA's ``format_converting_e2e.py`` itself only splits those pre-made
``source||target`` lines; it does not convert MRs.) That data was also word-tokenised (``£ 30``,
``rating .``); we keep the official text untokenised. ``rename_keys=False`` gives the plain rule
``[`` → `` : ``, ``]`` → ``""``, ``, `` → `` | `` (``eatType : pub``).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from .common import DataFormatError, Example, check_split, data_root, dataset_file, official_test_file, read_text
from .download import DEFAULT_TIMEOUT, fetch_files

E2E_DIR = "e2e"
E2E_BASE_URL = "https://raw.githubusercontent.com/tuetschek/e2e-dataset/master/"
E2E_FILES = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}
E2E_TEST_INPUTS_ONLY = "testset.csv"
SPLITS = ("train", "dev", "test")

# Attribute names as they appear in the LoRA / prefix-tuning E2E data; others are kept as they are.
E2E_KEY_NAMES = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}

_PAIR = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*")


def parse_mr(mr: str) -> list[tuple[str, str]]:
    """``name[X], eatType[pub]`` → ``[("name", "X"), ("eatType", "pub")]``; ValueError if malformed."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    while True:
        match = _PAIR.match(mr, pos)
        if match is None:
            raise ValueError(f"malformed MR at character {pos + 1}: {mr!r}")
        pairs.append((match[1], match[2].strip()))
        pos = match.end()
        if pos == len(mr):
            return pairs
        if mr[pos] != ",":
            raise ValueError(f"malformed MR at character {pos + 1} (expected ','): {mr!r}")
        pos += 1


def linearize_e2e(mr: str, *, rename_keys: bool = True) -> str:
    """The model input for one MR (see the module docstring for the format)."""
    pairs = parse_mr(mr)
    return " | ".join(f"{E2E_KEY_NAMES.get(k, k) if rename_keys else k} : {v}" for k, v in pairs)


def mr_of(source: str) -> str:
    """The MR (``name[X], eatType[pub]``) behind a model input in either form: an MR as it is, or
    ``linearize_e2e``'s ``name : X | Type : pub`` turned back; ValueError if it is neither."""
    try:
        parse_mr(source)
        return source
    except ValueError:
        pass
    original = {renamed: key for key, renamed in E2E_KEY_NAMES.items()}
    slots = []
    for part in source.split(" | "):
        key, sep, value = (s.strip() for s in part.partition(" : "))
        if not (sep and key) or any(c in key + value for c in "[],"):
            raise ValueError("not an E2E MR (name[X], eatType[pub]) nor its linearized form "
                             f"(name : X | Type : pub): {source!r}")
        slots.append(f"{original.get(key, key)}[{value}]")
    return ", ".join(slots)


def read_e2e_csv(path: str | os.PathLike[str], *, require_refs: bool = True) -> list[tuple[str, list[str]]]:
    """``[(mr, [refs...]), ...]`` grouped by MR in order of first appearance.

    Raises DataFormatError naming the file and the (physical, 1-based) line of the bad row.
    """
    path = Path(path)
    grouped: dict[str, list[str]] = {}
    for line, mr, ref in _rows(path, require_refs):
        try:
            parse_mr(mr)
        except ValueError as err:
            raise DataFormatError(str(err), path, f"line {line}") from None
        refs = grouped.setdefault(mr, [])
        if ref is not None:
            refs.append(ref)
    if not grouped:
        raise DataFormatError("no data rows", path)
    return list(grouped.items())


def _rows(path: Path, require_refs: bool) -> Iterator[tuple[int, str, str | None]]:
    """Yield ``(line, mr, ref-or-None)``; a byte-order mark is dropped if there is one."""
    text = read_text(path)  # not UTF-8: an error naming the line (a BOM is dropped)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DataFormatError("empty file (expected a header row)", path, "line 1")
        columns = [c.strip().lower() for c in header]
        if "mr" not in columns or (require_refs and "ref" not in columns):
            want = "mr,ref" if require_refs else "mr (and optionally ref)"
            raise DataFormatError(f"header {header!r} lacks columns {want}", path, "line 1")
        mr_col = columns.index("mr")
        ref_col = columns.index("ref") if "ref" in columns else None
        line = reader.line_num + 1
        for row in reader:
            if row:  # csv gives [] for a blank line
                yield line, *_fields(row, len(columns), mr_col, ref_col, path, line)
            line = reader.line_num + 1
    except csv.Error as err:
        raise DataFormatError(f"CSV error: {err}", path, f"line {reader.line_num}") from None


def _fields(
    row: Sequence[str], width: int, mr_col: int, ref_col: int | None, path: Path, line: int
) -> tuple[str, str | None]:
    if len(row) != width:
        raise DataFormatError(f"expected {width} fields, found {len(row)}: {row!r}", path, f"line {line}")
    mr = row[mr_col].strip()
    if not mr:
        raise DataFormatError("empty MR", path, f"line {line}")
    if ref_col is None:
        return mr, None
    ref = row[ref_col].strip()
    if not ref:
        raise DataFormatError("empty reference", path, f"line {line}")
    return mr, ref


def e2e_path(split: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The file for ``split``; for test, ``testset_w_refs.csv`` if present, else ``testset.csv``."""
    check_split(split, SPLITS)
    hint = "get it with lorakit.data.download_e2e"
    if split == "test":
        return official_test_file(root, E2E_DIR, E2E_FILES["test"], E2E_TEST_INPUTS_ONLY, hint=hint)
    return dataset_file(root, E2E_DIR, E2E_FILES[split], hint=hint)


def load_e2e(split: str, root: str | os.PathLike[str] | None = None) -> list[Example]:
    """E2E ``split`` ("train", "dev", "test") as one Example per distinct MR, first-appearance order.

    ``meta["mr"]`` keeps the original MR string. With only ``testset.csv`` the test references are ``()``.
    """
    path = e2e_path(split, root)
    rows = read_e2e_csv(path, require_refs=path.name != E2E_TEST_INPUTS_ONLY)
    return [Example(linearize_e2e(mr), tuple(refs), {"mr": mr}) for mr, refs in rows]


def download_e2e(
    dest: str | os.PathLike[str] | None = None,
    base_url: str = E2E_BASE_URL,
    *,
    splits: Sequence[str] = SPLITS,
    overwrite: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Path]:
    """Fetch the official E2E CSVs into ``dest`` (default ``<data root>/e2e``); existing files are kept."""
    folder = Path(dest) if dest is not None else data_root() / E2E_DIR
    for split in splits:
        check_split(split, SPLITS)
    return fetch_files(base_url, folder, [E2E_FILES[s] for s in splits], validate=read_e2e_csv,
                       overwrite=overwrite, timeout=timeout)
