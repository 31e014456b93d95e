"""``lorakit metrics e2e|webnlg --refs REFS --hyp HYP [--json]``: score a file of outputs like the official scorers."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

REFS_HELP = "references: an input's references on consecutive lines, inputs separated by one empty line"


def _run(args: argparse.Namespace) -> int:
    try:
        from .e2e import e2e_scores
        from .files import MetricsWarning, read_e2e_refs, read_hypotheses
        from .webnlg import webnlg_scores
    except ModuleNotFoundError as err:  # lorakit's CLI reports RuntimeErrors as one line, not a traceback
        raise RuntimeError(f"{err.name} is not installed: pip install 'lorakit[metrics]'") from None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricsWarning)
        references = read_e2e_refs(args.refs)
        hypotheses = read_hypotheses(args.hyp, expected=len(references))
        scores = (e2e_scores if args.benchmark == "e2e" else webnlg_scores)(hypotheses, references)
    for warning in caught:  # one clean line each instead of Python's file:line warning format
        print(f"lorakit metrics: warning: {warning.message}", file=sys.stderr)
    # Four decimals, as the E2E scorer prints them; None (METEOR without Java) stays visible as missing.
    shown: dict[str, Any] = {k: None if v is None else round(v, 4) for k, v in scores.items()}
    if args.json:
        print(json.dumps(shown))
    else:
        print("SCORES:\n==============")
        for name, value in shown.items():
            print(f"{name}: {'n/a (java not found)' if value is None else f'{value:.4f}'}")
    return 0


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
        sub.set_defaults(func=_run, benchmark=name)
    return metrics


def main(argv: list[str] | None = None) -> int:
    """``python -m lorakit.metrics.cli e2e ...``: the same sub-command without the rest of the lorakit CLI."""
    parser = argparse.ArgumentParser(prog="lorakit")
    add_metrics_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["metrics", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"lorakit metrics: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
