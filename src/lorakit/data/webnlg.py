"""WebNLG Challenge 2017 (Gardent et al.): DBpedia triples → texts, in the official XML.

Layout under ``<root>/webnlg2017/``: ``train/`` and ``dev/`` hold one XML per triple count and category
(``1triples/1triple_allSolutions_Airport_train_challenge.xml`` ...), read in sorted path order so the
example order never depends on the file system; ``test/testdata_with_lex.xml`` is the test set (or, as
given out with the references held back, ``test/testdata_no_lex.xml``: the same 1,862 inputs in order).

Input = the ``modifiedtripleset`` linearised as microsoft/LoRA ``format_converting_webnlg.py`` does:
``subject : property : object`` joined by `` | ``, entity names kept as written (underscores included:
that converter does not replace them). The challenge's 10 training categories are "seen"; the test set
adds 5 "unseen" ones, which is what LoRA reports separately (S/U/A columns).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .common import DataFormatError, Example, check_split, data_root, linearize_triples, official_test_file
from .download import DEFAULT_TIMEOUT, fetch_files

WEBNLG_DIR = "webnlg2017"
# Best-effort: the official GitLab repository's raw layout (mirrored on GitHub by forks).
WEBNLG_BASE_URL = "https://gitlab.com/shimorina/webnlg-dataset/-/raw/master/webnlg_challenge_2017/"
WEBNLG_TEST_FILE = "test/testdata_with_lex.xml"
WEBNLG_TEST_INPUTS_ONLY = "test/testdata_no_lex.xml"
SPLITS = ("train", "dev", "test")

SEEN_CATEGORIES = frozenset(
    {"Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument", "SportsTeam",
     "University", "WrittenWork"}
)
UNSEEN_CATEGORIES = frozenset({"Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician"})
CategoryFilter = Literal["all", "seen", "unseen"]

# Which (triple count, category) files train/ and dev/ hold in the official release.
_FILE_CATEGORIES: dict[int, tuple[str, ...]] = {
    1: tuple(sorted(SEEN_CATEGORIES)),
    **{n: tuple(sorted(SEEN_CATEGORIES - {"City"})) for n in range(2, 6)},
    **{n: ("Astronaut", "Monument", "University") for n in (6, 7)},
}


def webnlg_manifest(split: str) -> list[str]:
    """Relative paths (under the 2017 challenge folder) of the official files of ``split``."""
    check_split(split, SPLITS)
    if split == "test":
        return [WEBNLG_TEST_FILE]
    files = []
    for n, categories in _FILE_CATEGORIES.items():
        for cat in categories:
            stem = f"1triple_allSolutions_{cat}" if n == 1 else f"{n}triples_{cat}"
            files.append(f"{split}/{n}triples/{stem}_{split}_challenge.xml")
    return files


def read_webnlg_xml(path: str | os.PathLike[str], *, good_only: bool = False) -> list[Example]:
    """Entries of one WebNLG XML file, one Example per entry.

    ``good_only`` drops texts whose ``comment`` is not "good" (LoRA's converter keeps only those; the
    2017 train/dev sets hold 77/10 "toFix" texts) and then entries left with none.
    """
    path = Path(path)
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        line, column = err.position
        raise DataFormatError(f"malformed XML: {err}", path, f"line {line}, column {column}") from None
    entries = list(tree.getroot().iter("entry"))
    if not entries:
        raise DataFormatError("no <entry> elements", path)
    examples = []
    for index, entry in enumerate(entries):
        example = _entry(entry, path, index, good_only)
        if example is not None:
            examples.append(example)
    return examples


def _entry(entry: ET.Element, path: Path, index: int, good_only: bool) -> Example | None:
    def fail(message: str) -> DataFormatError:
        where = f"line {_entry_line(path, index)}, entry eid={entry.get('eid', '?')}"
        return DataFormatError(message, path, where)

    category = entry.get("category")
    if not category:
        raise fail("<entry> has no category attribute")
    mset = entry.find("modifiedtripleset")
    if mset is None:
        raise fail("no <modifiedtripleset>")
    triples = []
    for mtriple in mset.iter("mtriple"):
        parts = [p.strip() for p in (mtriple.text or "").split(" | ")]
        if len(parts) != 3 or not all(parts):
            raise fail(f"<mtriple> is not 'subject | property | object': {mtriple.text!r}")
        triples.append(tuple(parts))
    if not triples:
        raise fail("empty <modifiedtripleset>")
    lexes = entry.findall("lex")
    refs = []
    for lex in lexes:
        text = " ".join("".join(lex.itertext()).split())
        if not text:
            raise fail(f"empty <lex> (lid={lex.get('lid', '?')})")
        if not good_only or lex.get("comment", "good") == "good":
            refs.append(text)
    if lexes and not refs:
        return None
    meta = {
        "category": category,
        "seen": category in SEEN_CATEGORIES,
        "eid": entry.get("eid"),
        "size": len(triples),
        "triples": tuple(triples),
    }
    return Example(linearize_triples(triples), tuple(refs), meta)


def _entry_line(path: Path, index: int) -> int | str:
    """Line of the ``index``-th ``<entry`` tag; ElementTree keeps no positions, so scan the text."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "?"
    for i, match in enumerate(re.finditer(r"<entry[\s>/]", text)):
        if i == index:
            return text.count("\n", 0, match.start()) + 1
    return "?"


def webnlg_files(split: str, root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The XML files of ``split`` in sorted order (train/dev: every ``*.xml`` below the split folder)."""
    check_split(split, SPLITS)
    base = data_root(root) / WEBNLG_DIR
    hint = "get it with lorakit.data.download_webnlg"
    if split == "test":
        return [official_test_file(root, WEBNLG_DIR, WEBNLG_TEST_FILE, WEBNLG_TEST_INPUTS_ONLY, hint=hint)]
    folder = base / split
    files = sorted(folder.rglob("*.xml")) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no WebNLG XML files under {folder}: {hint}")
    return files


def load_webnlg(
    split: str,
    root: str | os.PathLike[str] | None = None,
    *,
    categories: CategoryFilter = "all",
    good_only: bool = False,
) -> list[Example]:
    """WebNLG 2017 ``split`` ("train", "dev", "test"), one Example per entry.

    ``categories`` keeps "seen" (the 10 training categories), "unseen" (the 5 test-only ones) or "all";
    ``meta`` has ``category``, ``seen``, ``eid``, ``size`` and ``triples``.
    """
    if categories not in ("all", "seen", "unseen"):
        raise ValueError(f"categories must be 'all', 'seen' or 'unseen', not {categories!r}")
    examples = [ex for path in webnlg_files(split, root) for ex in read_webnlg_xml(path, good_only=good_only)]
    if categories == "all":
        return examples
    return [ex for ex in examples if ex.meta["seen"] == (categories == "seen")]


def download_webnlg(
    dest: str | os.PathLike[str] | None = None,
    base_url: str = WEBNLG_BASE_URL,
    *,
    splits: Sequence[str] = SPLITS,
    overwrite: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Path]:
    """Fetch the WebNLG 2017 XML files into ``dest`` (default ``<data root>/webnlg2017``).

    Best-effort: it follows the official repository's layout at the time of writing; if that moves,
    pass another ``base_url`` with the same ``train/ dev/ test/`` structure.
    """
    folder = Path(dest) if dest is not None else data_root() / WEBNLG_DIR
    relpaths = [rel for split in splits for rel in webnlg_manifest(split)]
    return fetch_files(base_url, folder, relpaths, validate=read_webnlg_xml, overwrite=overwrite, timeout=timeout)
