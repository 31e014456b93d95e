"""The eight GLUE tasks (Wang et al. 2018) read from their official TSV files, as distributed.

GLUE's TSVs are not CSV: fields may hold unbalanced quotes (MRPC, SST-2), so lines are split on tabs only.
Every problem (a missing column, an unknown label, a score that is not a number) raises a
:class:`DataFormatError` naming the file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .common import DataFormatError, data_root, read_lines


@dataclass(frozen=True)
class GlueSpec:
    """Where a task's files are and which columns hold the texts and the label.

    Columns are header names, or positions for the header-less CoLA train/dev files. ``labels`` is None for
    regression (STS-B); otherwise a label's index in it is the class id.
    """

    name: str
    folder: str
    text_columns: tuple[str | int, ...]
    label_column: str | int
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]  # the first is the task's headline metric (the LoRA paper's column)
    test_text_columns: tuple[str, ...] = ()
    header: bool = True
    index_column: str = "index"
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train.tsv", "dev": "dev.tsv",
                                                             "test": "test.tsv"})

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_MNLI_SPLITS = {"train": "train.tsv", "dev": "dev_matched.tsv", "dev_matched": "dev_matched.tsv",
                "dev_mismatched": "dev_mismatched.tsv", "test": "test_matched.tsv",
                "test_matched": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"}

GLUE_TASKS: dict[str, GlueSpec] = {spec.name: spec for spec in (
    GlueSpec("cola", "CoLA", (3,), 1, ("0", "1"), ("matthews",), ("sentence",), header=False),
    GlueSpec("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",), ("sentence",)),
    GlueSpec("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("accuracy", "f1"),
             ("#1 String", "#2 String")),
    GlueSpec("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"),
             ("sentence1", "sentence2")),
    GlueSpec("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("accuracy", "f1"),
             ("question1", "question2"), index_column="id"),
    GlueSpec("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             ("accuracy",), ("sentence1", "sentence2"), splits=_MNLI_SPLITS),
    GlueSpec("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",),
             ("question", "sentence")),
    GlueSpec("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",),
             ("sentence1", "sentence2")),
)}


@dataclass(frozen=True)
class GlueExample:
    """One sentence or sentence pair; ``label`` is a class id, a float (STS-B) or None (test files)."""

    text_a: str
    text_b: str | None
    label: int | float | None
    index: str
    line: int


def glue_spec(task: str) -> GlueSpec:
    key = task.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def glue_file(task: str, split: str, root: str | os.PathLike | None = None) -> Path:
    spec = glue_spec(task)
    if split not in spec.splits:
        raise ValueError(f"GLUE {spec.name} has no split {split!r}; splits: {', '.join(spec.splits)}")
    return data_root(root) / "glue" / spec.folder / spec.splits[split]


def load_glue(task: str, split: str, root: str | os.PathLike | None = None) -> list[GlueExample]:
    """A GLUE split's examples in file order (so predictions line up with the official test index)."""
    spec = glue_spec(task)
    path = glue_file(task, split, root)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GLUE {spec.name} {split} file not found")
    return read_glue_tsv(spec, path, labelled=not split.startswith("test"))


def read_glue_tsv(spec: GlueSpec, path: Path, labelled: bool = True) -> list[GlueExample]:
    lines = read_lines(path)  # MRPC ships with a byte-order mark, which read_text drops
    header_less = labelled and not spec.header
    start = 0 if header_less else 1
    if not lines:
        raise DataFormatError("empty file", path)
    if header_less:
        position = {c: c for c in (*spec.text_columns, spec.label_column) if isinstance(c, int)}
        needed = max(position) + 1
        index_at = None
    else:
        header = lines[0].rstrip("\r").split("\t")
        text_columns = spec.text_columns if labelled else spec.test_text_columns
        wanted = [*text_columns, *([spec.label_column] if labelled else [])]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataFormatError(f"header has no column {missing[0]!r} (columns: {', '.join(header)})", path, "line 1")
        position = {c: header.index(c) for c in wanted}
        needed = len(header)
        index_at = header.index(spec.index_column) if spec.index_column in header else None
    if not lines[start:]:
        raise DataFormatError("no examples", path)
    text_columns = spec.text_columns if labelled else (spec.test_text_columns or spec.text_columns)
    examples = []
    for number, raw in enumerate(lines[start:], start=start + 1):
        fields = raw.rstrip("\r").split("\t")
        where = f"line {number}"
        if len(fields) < needed:
            raise DataFormatError(f"{len(fields)} tab-separated fields, expected {needed}", path, where)
        texts = [fields[position[c]] for c in text_columns]
        label = _label(spec, fields[position[spec.label_column]], path, where) if labelled else None
        index = fields[index_at] if index_at is not None else str(len(examples))
        examples.append(GlueExample(texts[0], texts[1] if len(texts) > 1 else None, label, index, number))
    return examples


def _label(spec: GlueSpec, value: str, path: Path, where: str) -> int | float:
    value = value.strip()
    if spec.labels is None:
        try:
            return float(value)
        except ValueError:
            raise DataFormatError(f"score {value!r} is not a number", path, where) from None
    if value not in spec.labels:
        raise DataFormatError(f"unknown label {value!r} for {spec.name} (labels: {', '.join(spec.labels)})",
                              path, where)
    return spec.labels.index(value)
