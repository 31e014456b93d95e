"""The plain-text files the official NLG scorers read: a references file and a hypotheses file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..data.common import DataFormatError, read_lines


class MetricsFileError(ValueError):
    """A references or hypotheses file cannot be scored; the message names the file and what is wrong."""


class MetricsWarning(UserWarning):
    """Something was scored, but not exactly as asked (a metric left out, an approximation, empty lines)."""


def _lines(path: str | os.PathLike[str]) -> list[str]:
    """Stripped lines, split on line ends only (so a form feed in an output cannot shift the rest), a BOM
    dropped; bytes that are not UTF-8 are an error naming the file and line."""
    try:
        return [line.strip() for line in read_lines(path)]
    except DataFormatError as err:
        raise MetricsFileError(f"{path}: {err.where}: {err.message}") from None


def read_e2e_refs(path: str | os.PathLike[str]) -> list[list[str]]:
    """References per input, as e2e-metrics ``measure_scores.py`` reads them.

    An input's references sit on consecutive lines and inputs are separated by one empty line. A file
    with no empty line at all is the scorer's single-reference layout: one input per line.
    """
    lines = _lines(path)
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise MetricsFileError(f"{path}: references file is empty")
    if "" not in lines:
        return [[line] for line in lines]
    groups: list[list[str]] = [[]]
    for number, line in enumerate(lines, start=1):
        if line:
            groups[-1].append(line)
        elif groups[-1]:
            groups.append([])
        else:  # the official scorer would silently create an input with no reference and crash later
            raise MetricsFileError(f"{path}: line {number}: two empty lines in a row (an input with no references)")
    return groups


def read_hypotheses(path: str | os.PathLike[str], expected: int | None = None, *,
                    references: str | os.PathLike[str] | None = None) -> list[str]:
    """One system output per line; ``expected`` is the number of inputs in the references (the file
    ``references``, when given, is named in the errors).

    A count mismatch is an error rather than a silent truncation: it almost always means outputs and
    references are shifted against each other, and every score after the shift would be wrong. Empty
    lines are kept (a model may legitimately output nothing) but reported, since they usually are not.
    """
    lines = _lines(path)
    refs = "the references have" if references is None else f"{references} has"
    if not lines or lines == [""]:
        of = "" if references is None else f" of {references}"
        raise MetricsFileError(f"{path}: hypotheses file is empty"
                               + (f" (expected {expected} lines, one per input{of})" if expected else ""))
    if expected is not None and len(lines) != expected:
        raise MetricsFileError(f"{path}: {len(lines)} hypothesis lines, but {refs} {expected} inputs "
                               "(one line per input is expected)")
    empty = [number for number, line in enumerate(lines, start=1) if not line]
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        warnings.warn(f"{Path(path).name}: {len(empty)} empty hypothesis line(s) (line {shown}); "
                      "they are scored as empty outputs", MetricsWarning, stacklevel=2)
    return lines
