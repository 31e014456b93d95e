"""Score a predictions file against a dataset split's own references, or against a user's own data file
(``lorakit evaluate``), so nobody has to build a references file by hand and get its order or grouping wrong."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.common import Example
from ..data.user import UserDataError, load_user_data, parse_columns, references
from ..data.user.load import INTEGER_TEXT as _INT
from ..files import atomic_write
from ..tasks import get_task
from .files import MetricsFileError, MetricsWarning, read_hypotheses
from .glue import glue_metric
from .labels import read_label_names


def evaluate_predictions(task: str, split: str, predictions: str | os.PathLike[str],
                         root: str | os.PathLike[str] | None = None, *,
                         slot_report: str | os.PathLike[str] | None = None,
                         limit: int | None = None) -> dict[str, Any]:
    """Scores of ``predictions`` (one line per input, in the split's order, as ``lorakit generate`` writes
    them) on ``task``'s ``split``: E2E's five metrics and its slot error rate against the MRs (the outputs
    with slot errors written to ``slot_report`` if given), or WebNLG/DART's BLEU/METEOR/TER (WebNLG per
    seen/unseen/all category). ``limit``: only the split's first inputs (``lorakit generate --limit``)."""
    from .e2e import e2e_scores
    from .ser import slot_scores
    from .webnlg import dart_scores, webnlg_scores_by_category

    if slot_report is not None and task != "e2e":
        raise ValueError(f"slot errors are E2E's (its MRs have slots); {task} has none")

    examples = _first(get_task(task).examples(split, root), limit)
    missing = sum(1 for ex in examples if not ex.references)
    if missing:
        raise ValueError(f"{task} {split}: {missing} of {len(examples)} inputs have no references "
                         "(a test split whose references are held back cannot be scored)")
    hypotheses = read_hypotheses(predictions, expected=len(examples))
    references = [list(ex.references) for ex in examples]
    if task == "e2e":
        mrs = [ex.meta["mr"] for ex in examples]
        return e2e_scores(hypotheses, references) | slot_scores(mrs, hypotheses, slot_report)
    if task == "webnlg":
        return webnlg_scores_by_category(examples, hypotheses)
    return dart_scores(hypotheses, references)


def write_references(task: str, split: str, path: str | os.PathLike[str],
                     root: str | os.PathLike[str] | None = None, limit: int | None = None) -> int:
    """The split's references (its first ``limit`` inputs' if given) in the e2e-metrics layout (an input's
    references on consecutive lines, inputs separated by an empty line), for ``lorakit metrics`` or the
    official scorers; returns the input count."""
    examples = _first(get_task(task).examples(split, root), limit)
    text = "\n\n".join("\n".join(ex.references) for ex in examples) + "\n"
    atomic_write(Path(path), text.encode("utf-8"))
    return len(examples)


def _first(examples: list[Example], limit: int | None) -> list[Example]:
    """The split's first ``limit`` inputs (all with None): what ``generate --limit`` decodes."""
    if limit is None:
        return examples
    if limit < 1:
        raise ValueError(f"limit must be a positive number of inputs, got {limit}")
    return examples[:limit]


# ------------------------------------------------------------------------------------- a user's own file

TEXT_METRICS = ("BLEU", "ROUGE_L", "exact_match")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")


def evaluate_user_predictions(predictions: str | os.PathLike[str], data: str | os.PathLike[str], *,
                              format: str | None = None, columns: str | Mapping[str, str] | None = None,
                              labels: str | os.PathLike[str] | None = None) -> dict[str, float]:
    """Scores (all in percent) of ``predictions`` (one line per example of ``data``, in its order, as
    ``lorakit generate --data`` / ``lorakit predict --data`` write them) against the user's own file.

    Prompt-completion and messages files (reference: the completion, or the conversation's final assistant
    turn): sacrebleu's corpus BLEU, ROUGE-L (pycocoevalcap's, on the E2E scorer's PTB tokens) and exact
    match (whitespace collapsed, case kept). Classification files: accuracy, macro F1 and Matthews against
    ``label``, predictions as label names, or as class ids with ``labels`` (a ``labels.json`` or the adapter
    folder holding it) giving the names in id order; float labels (regression): Pearson and Spearman.
    ``format``/``columns`` as in :func:`lorakit.data.user.load_user_data`.
    """
    gold = load_user_data(data, format=format, columns=columns)
    if gold.format == "text":
        raise UserDataError("format text has no references to score against (expected prompt + completion, "
                            "messages, or text + label)", gold.path)
    if labels is not None and gold.format != "classification":
        raise ValueError(f"label names (--labels) apply to classification files; {gold.path} is {gold.format}")
    hypotheses = read_hypotheses(predictions, expected=len(gold), references=gold.path)
    if gold.format == "classification":
        if gold.label_kind == "float":
            return _regression_scores(hypotheses, gold.columns["label"], predictions, gold.path)
        names = None if labels is None else read_label_names(labels)
        gold_names = [str(v) for v in gold.columns["label"]]
        predicted = predictions_as_names(hypotheses, gold_names, names, predictions, gold.path,
                                         ids_are_names=gold.label_kind == "int")
        known = set(gold_names) | set(names or ())
        return classification_scores(predicted, gold_names, sorted(set(gold_names) | (set(predicted) & known)))
    refs = references(gold)
    missing = next((i for i, ref in enumerate(refs) if ref is None), None)
    if missing is not None:
        raise UserDataError("the conversation does not end with an assistant turn: nothing to score against",
                            gold.path, gold.where(missing), columns_key(columns, "messages"))
    return text_scores(hypotheses, refs)


def columns_key(columns: str | Mapping[str, str] | None, key: str) -> str:
    """The file's column name for our ``key`` (errors name what the user wrote)."""
    return parse_columns(columns).get(key, key)


def _collapse(text: str) -> str:
    return " ".join(text.split())


def text_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU (sacrebleu's defaults: 13a tokens, case kept, exponential smoothing), ROUGE-L (pycocoevalcap,
    beta 1.2, mean over examples, on lowercased PTB tokens as the E2E scorer feeds it) and exact match, all
    in percent, one reference per example."""
    from pycocoevalcap.rouge.rouge import Rouge
    from sacrebleu.metrics import BLEU

    from .coco import ptb_tokenize

    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"{len(hypotheses)} outputs for {len(references)} references")
    bleu = BLEU().corpus_score(list(hypotheses), [list(references)]).score
    n = len(hypotheses)
    tokens = ptb_tokenize([*hypotheses, *references])
    rouge = Rouge().compute_score({i: [tokens[n + i]] for i in range(n)}, {i: [tokens[i]] for i in range(n)})[0]
    exact = sum(_collapse(h) == _collapse(r) for h, r in zip(hypotheses, references, strict=True)) / n
    return {"BLEU": float(bleu), "ROUGE_L": float(rouge) * 100, "exact_match": exact * 100}


def predictions_as_names(lines: Sequence[str], gold: Sequence[str], names: Sequence[str] | None,
                         path: str | os.PathLike[str], gold_path: str, *, ids_are_names: bool) -> list[str]:
    """Each prediction as a label name: a name as is, a class id through ``names`` (id order).

    A prediction that is no label is scored as wrong, with a warning (a typo or another label set); but
    integer predictions against string labels without ``names`` are an error, since they are almost surely
    class ids that nobody can map without the adapter's label order.
    """
    known = set(gold) | set(names or ())
    out: list[str] = []
    unknown: list[int] = []
    for number, line in enumerate(lines, start=1):
        if line in known:
            out.append(line)
        elif names is not None and _INT.fullmatch(line):
            index = int(line)
            if not 0 <= index < len(names):
                raise MetricsFileError(f"{path}: line {number}: class id {index} is out of range "
                                       f"({len(names)} label names: {', '.join(names)})")
            out.append(names[index])
        else:
            out.append(line)
            unknown.append(number)
    if not unknown:
        return out
    shown = ", ".join(sorted(known))
    first = lines[unknown[0] - 1]
    if names is None and not ids_are_names and all(_INT.fullmatch(lines[n - 1]) for n in unknown):
        raise MetricsFileError(f"{path}: line {unknown[0]}: prediction {first!r} is not a label of {gold_path} "
                               f"({shown}); class ids need the label names in id order: --labels "
                               "ADAPTER/labels.json")
    warnings.warn(f"{Path(path).name}: {len(unknown)} prediction(s) are not labels of {gold_path} (first: line "
                  f"{unknown[0]}, {first!r}; labels: {shown}); they are scored as wrong", MetricsWarning, stacklevel=2)
    return out


def classification_scores(predicted: Sequence[str], gold: Sequence[str],
                          classes: Sequence[str] | None = None) -> dict[str, float]:
    """Accuracy, macro F1 (over ``classes``: by default every label seen in either list) and Matthews
    correlation (multi-class), in percent as the GLUE metrics are."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} labels")
    if not gold:
        raise ValueError("no examples to score")
    classes = sorted(set(gold) | set(predicted)) if classes is None else list(classes)
    return {
        "accuracy": float(accuracy_score(gold, predicted)) * 100,
        "macro_f1": float(f1_score(gold, predicted, labels=classes, average="macro", zero_division=0)) * 100,
        "matthews": float(matthews_corrcoef(gold, predicted)) * 100,
    }


def _regression_scores(lines: Sequence[str], gold: Sequence[float], path: str | os.PathLike[str],
                       gold_path: str) -> dict[str, float]:
    values = []
    for number, line in enumerate(lines, start=1):
        try:
            value = float(line)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise MetricsFileError(f"{path}: line {number}: {line!r} is not a number (the labels of {gold_path} "
                                   "are regression scores)")
        values.append(value)
    return {name: glue_metric(name, values, gold) for name in REGRESSION_METRICS}
