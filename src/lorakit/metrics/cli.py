"""``lorakit metrics e2e|webnlg --refs REFS --hyp HYP [--json]``: score a file of outputs like the official scorers
(E2E with ``--mrs``: its slot error rate too); ``lorakit evaluate PREDICTIONS --task T | --data FILE``: against a
split's or a user's file's own references."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

from ..flags import output_file

REFS_HELP = "references: an input's references on consecutive lines, inputs separated by one empty line"
SLOT_ERRORS_HELP = ("write the outputs with slot errors (the MR values missing, added or wrong in each) to PATH, "
                    "after a summary line")


def _run(args: argparse.Namespace) -> int:
    try:
        from .e2e import e2e_scores
        from .files import MetricsFileError, MetricsWarning, read_e2e_refs, read_hypotheses
        from .ser import read_mrs, slot_scores
        from .webnlg import webnlg_scores
    except ModuleNotFoundError as err:  # lorakit's CLI reports RuntimeErrors as one line, not a traceback
        raise RuntimeError(f"{err.name} is not installed: pip install 'lorakit[metrics]'") from None

    mrs_file, report = getattr(args, "mrs", None), getattr(args, "slot_errors", None)
    if report and not mrs_file:
        raise ValueError("--slot-errors compares each output with its MR: give --mrs MRS_FILE")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricsWarning)
        references = read_e2e_refs(args.refs)
        hypotheses = read_hypotheses(args.hyp, expected=len(references))
        mrs = read_mrs(mrs_file) if mrs_file else None
        if mrs is not None and len(mrs) != len(hypotheses):
            raise MetricsFileError(f"{mrs_file}: {len(mrs)} MRs, but {args.hyp} has {len(hypotheses)} outputs "
                                   "(one MR per output, in the same order, is expected)")
        scores = (e2e_scores if args.benchmark == "e2e" else webnlg_scores)(hypotheses, references)
        if mrs is not None:
            scores |= slot_scores(mrs, hypotheses, report)
    for warning in caught:  # one clean line each instead of Python's file:line warning format
        print(f"lorakit metrics: warning: {warning.message}", file=sys.stderr)
    if report:
        print(f"wrote the outputs with slot errors to {report}", file=sys.stderr)
    _print_scores(scores, args.json)
    return 0


def _print_scores(scores: dict[str, Any], as_json: bool) -> None:
    """Four decimals, as the E2E scorer prints them; None (METEOR without Java) stays visible as missing."""
    def rounded(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return None if value is None else round(value, 4)

    shown = rounded(scores)
    if as_json:
        print(json.dumps(shown))
        return
    groups = shown if all(isinstance(v, dict) for v in shown.values()) else {"": shown}
    for group, values in groups.items():
        print(f"SCORES{f' ({group})' if group else ''}:\n==============")
        for name, value in values.items():
            print(f"{name}: {'n/a (java not found)' if value is None else f'{value:.4f}'}")


def _evaluate(args: argparse.Namespace) -> int:
    try:
        from .evaluate import evaluate_predictions, evaluate_user_predictions, write_references
        from .files import MetricsWarning
    except ModuleNotFoundError as err:
        raise RuntimeError(f"{err.name} is not installed: pip install 'lorakit[metrics]'") from None

    user_flags = [flag for flag, value in (("--format", args.format), ("--columns", args.columns),
                                           ("--labels", args.labels)) if value is not None]
    if args.task is None and not args.data:
        raise ValueError("give --data FILE (your own test file: JSONL, JSON, CSV, TSV or Parquet) or --task "
                         "(a built-in benchmark's split)")
    if args.task is not None and user_flags:
        raise ValueError(f"{', '.join(user_flags)} apply to your own --data file, not to --task {args.task}")
    if args.task is None and args.write_refs:
        raise ValueError("--write-refs writes a built-in task's references: it needs --task")
    if args.task is None and args.limit is not None:
        raise ValueError("--limit takes a built-in task's first inputs: it needs --task")
    if args.slot_errors and args.task != "e2e":
        raise ValueError("--slot-errors compares E2E outputs with their MRs: it needs --task e2e")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricsWarning)
        if args.task is None:
            scores = evaluate_user_predictions(args.predictions, args.data, format=args.format,
                                               columns=args.columns, labels=args.labels)
        else:
            scores = evaluate_predictions(args.task, args.split, args.predictions, args.data,
                                          slot_report=args.slot_errors, limit=args.limit)
    for warning in caught:
        print(f"lorakit evaluate: warning: {warning.message}", file=sys.stderr)
    if args.write_refs:
        count = write_references(args.task, args.split, args.write_refs, args.data, args.limit)
        print(f"wrote the references of {count} inputs to {args.write_refs}", file=sys.stderr)
    if args.slot_errors:
        print(f"wrote the outputs with slot errors to {args.slot_errors}", file=sys.stderr)
    _print_scores(scores, args.json)
    return 0


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate``: a predictions file against a dataset split's references, or a user's own file."""
    evaluate = subparsers.add_parser(
        "evaluate", help="score a predictions file against your own test file or a dataset split's references",
        description="Score one prediction per line (in the file's or split's order, as `lorakit generate` and "
                    "`lorakit predict` write them). With --data FILE (your own file): BLEU (sacrebleu), ROUGE-L "
                    "and exact match against the completion or the conversation's last assistant turn; accuracy, "
                    "macro F1 and Matthews against the label (predictions as label names, or class ids with "
                    "--labels); Pearson/Spearman for float labels; all in percent. With --task: the task's "
                    "official metrics: E2E BLEU/NIST/METEOR/ROUGE_L/CIDEr and the slot error rate SER (percent "
                    "of the MRs' slots missing, added or wrong; Dušek et al. 2019), WebNLG BLEU/METEOR/TER by "
                    "seen/unseen/all category, DART BLEU/METEOR/TER.")
    evaluate.add_argument("predictions", help="one prediction per line")
    evaluate.add_argument("--data", help="your own test file (JSONL, JSON, CSV, TSV, Parquet); with --task: the "
                                         "data folder (default: $LORAKIT_DATA)")
    evaluate.add_argument("--format", help="force the file's format: text, prompt-completion, messages or "
                                           "classification (default: detected from the columns)")
    evaluate.add_argument("--columns", help="map other column names, e.g. prompt=question,completion=answer")
    evaluate.add_argument("--labels", metavar="PATH",
                          help="classification: labels.json (or the adapter folder holding it), the label names "
                               "in class-id order, for predictions written as class ids")
    evaluate.add_argument("--task", choices=["e2e", "webnlg", "dart"], help="score a built-in benchmark's split")
    evaluate.add_argument("--split", default="dev", help="with --task (default: dev)")
    evaluate.add_argument("--limit", type=int, metavar="N",
                          help="with --task: score the split's first N inputs (as `lorakit generate --limit N` "
                               "decodes them)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate.add_argument("--write-refs", metavar="PATH", type=output_file,
                          help="with --task: also write the split's references in the e2e-metrics layout to PATH")
    evaluate.add_argument("--slot-errors", metavar="PATH", type=output_file,
                          help=f"with --task e2e: {SLOT_ERRORS_HELP}")
    evaluate.set_defaults(func=_evaluate)
    return evaluate


def add_metrics_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``metrics`` (with ``e2e`` and ``webnlg``/``dart``) on the ``lorakit`` sub-command set."""
    metrics = subparsers.add_parser("metrics", help="official NLG scores of a hypotheses file against references")
    benchmarks = metrics.add_subparsers(dest="benchmark", required=True)
    for name, aliases, what in (("e2e", [], "E2E scorer: BLEU (fraction), NIST, METEOR, ROUGE_L, CIDEr"),
                                ("webnlg", ["dart"], "WebNLG/DART evaluation: BLEU (percent), METEOR, TER")):
        sub = benchmarks.add_parser(name, aliases=aliases, help=what, description=what)
        sub.add_argument("--refs", required=True, help=REFS_HELP)
        sub.add_argument("--hyp", required=True, help="system outputs, one line per input")
        sub.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        if name == "e2e":
            sub.add_argument("--mrs", metavar="MRS_FILE",
                             help="the inputs' MRs (name[X], eatType[pub], ...), one per line in the outputs' order, "
                                  "or an E2E CSV (MRs in first-appearance order): adds the slot error rate SER")
            sub.add_argument("--slot-errors", metavar="PATH", type=output_file, help=f"with --mrs: {SLOT_ERRORS_HELP}")
        sub.set_defaults(func=_run, benchmark=name)
    return metrics

