"""``lorakit predict``: classify sentences, a file, a user's own data file, or a GLUE split with a task adapter
(or a fully fine-tuned model), batched, with a progress bar."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.common import DataFormatError, read_lines
from ..data.glue import GlueExample
from ..files import atomic_write, strict_json
from ..flags import int_at_least, output_file
from ..quant import add_quantize_flag

if TYPE_CHECKING:
    from ..data.user import UserData


def read_inputs(path: str) -> list[GlueExample]:
    """One input per line; a tab separates the two sentences of a pair. Every line must agree."""
    lines = read_lines(path)  # "\n" ends a line, not a form feed or U+2028 inside one
    if not lines:
        raise DataFormatError("no inputs", path)
    examples = []
    for number, line in enumerate(lines, start=1):
        parts = line.split("\t")
        if len(parts) > 2 or not parts[0].strip():
            raise DataFormatError("expected a sentence, or two separated by one tab", path, f"line {number}")
        if examples and (len(parts) == 2) != (examples[0].text_b is not None):
            raise DataFormatError("mixes single sentences and sentence pairs", path, f"line {number}")
        examples.append(GlueExample(parts[0], parts[1] if len(parts) == 2 else None, None, str(number - 1), number))
    return examples


def _predict(args: argparse.Namespace) -> int:
    if args.task is None:
        return _predict_user(args)
    if args.columns is not None:
        raise ValueError("--columns applies to your own --data file, not to --task")
    from ..hardware import resolve_device
    from ..metrics.glue import glue_scores
    from .predict import load_classifier, predict, write_predictions

    device = resolve_device(args.device, quantize=args.quantize)
    model, tokenizer = load_classifier(args.model, args.task, args.adapter, args.quantize, device)
    model.to(device)
    if args.input:
        examples = read_inputs(args.input)
    elif args.text:
        examples = [GlueExample(t, None, None, str(i), i + 1) for i, t in enumerate(args.text)]
    else:
        from ..tasks import get_task

        examples = get_task(args.task).examples(args.split, args.data)
    predictions = predict(model, tokenizer, args.task, examples, batch_size=args.batch_size, progress=True)
    if args.output:
        write_predictions(args.output, args.task, examples, predictions, submission=args.glue_submission)
        print(f"wrote {len(predictions)} predictions to {args.output}", file=sys.stderr)
    else:
        from ..tasks import get_task

        spec = get_task(args.task).spec
        for example, p in zip(examples, predictions, strict=True):
            label = f"{p:.4f}" if spec.is_regression else spec.labels[p]
            print(f"{label}\t{example.text_a}" + (f"\t{example.text_b}" if example.text_b is not None else ""))
    labelled = [e.label for e in examples if e.label is not None]
    if not args.input and not args.text and len(labelled) == len(examples):
        print(json.dumps({k: round(v, 4) for k, v in glue_scores(args.task, predictions, labelled).items()}),
              file=sys.stderr)
    return 0


def _predict_user(args: argparse.Namespace) -> int:
    """Classification with an adapter trained on the user's own data: a file (``--data``), ``--input`` or
    ``--text``; one label name per line; accuracy, macro F1 and Matthews when the file has labels."""
    from ..data.user import load_user_data
    from ..hardware import resolve_device
    from .predict import load_user_classifier, output_names, predict_user_logits, user_predictions

    given = [flag for flag, value in (("--data", args.data), ("--input", args.input), ("--text", args.text)) if value]
    if len(given) != 1:
        raise ValueError("give one of --data FILE (your own CSV/TSV/JSONL/JSON/Parquet file), --input or --text"
                         + (f", not {' and '.join(given)}" if given else "") + "; or --task for a GLUE task")
    if args.glue_submission:
        raise ValueError("--glue-submission writes a GLUE task's test predictions: it needs --task")
    if args.columns is not None and not args.data:
        raise ValueError("--columns maps the columns of a --data file")
    data = None
    if args.data:
        data = load_user_data(args.data, format="classification", columns=args.columns, require_targets=False)
        texts, pairs = data.columns["text"], data.columns.get("text_pair")
    elif args.input:
        examples = read_inputs(args.input)
        texts = [e.text_a for e in examples]
        pairs = None if examples[0].text_b is None else [e.text_b for e in examples]
    else:
        texts, pairs = list(args.text), None
    device = resolve_device(args.device, quantize=args.quantize)
    model, tokenizer, names = load_user_classifier(args.model, args.adapter, args.quantize, device)
    model.to(device)
    from ..decode.api import context_length

    context = context_length(model)
    if args.max_length is not None and context is not None and args.max_length > context:
        raise ValueError(f"--max-length {args.max_length} is beyond the model's {context} positions: use at most "
                         f"{context}")
    max_length = args.max_length or min(256, context or 256)
    if names is None:
        where = args.adapter or args.model
        print(f"lorakit predict: warning: no labels.json in {where}: outputs are named by the model config's "
              "id2label, or by class id", file=sys.stderr)
    logits = predict_user_logits(model, tokenizer, texts, pairs, batch_size=args.batch_size,
                                 max_length=max_length, truncation=args.truncation, progress=True)
    predictions = user_predictions(model, logits, names)
    shown = [f"{p:.4f}" if isinstance(p, float) else p for p in predictions]
    if args.output:
        atomic_write(args.output, ("\n".join(shown) + "\n").encode("utf-8"))
        print(f"wrote {len(shown)} predictions to {args.output}", file=sys.stderr)
    else:
        for i, label in enumerate(shown):
            print(f"{label}\t{texts[i]}" + (f"\t{pairs[i]}" if pairs is not None else ""))
    if data is not None and "label" in data.columns:
        width = logits.shape[-1]
        _score_user(data, predictions, None if width == 1 else output_names(model, names, width))
    return 0


def _score_user(data: UserData, predictions: list[str] | list[float], classes: list[str] | None) -> None:
    """Scores on the rows that have a label, printed as one JSON line on stderr (as for GLUE splits)."""
    from ..metrics.evaluate import REGRESSION_METRICS, classification_scores
    from ..metrics.glue import glue_metric

    rows = [i for i, v in enumerate(data.columns["label"]) if v is not None]
    if not rows:
        return
    regression = bool(predictions) and isinstance(predictions[0], float)
    if regression != (data.label_kind == "float"):
        print(f"lorakit predict: warning: {data.path} has {'regression' if data.label_kind == 'float' else 'class'} "
              f"labels but the model {'scores' if regression else 'classifies'}: not scored", file=sys.stderr)
        return
    gold = [data.columns["label"][i] for i in rows]
    got = [predictions[i] for i in rows]
    if regression:
        scores = {name: glue_metric(name, got, gold) for name in REGRESSION_METRICS}
    else:
        gold = [str(v) for v in gold]
        unknown = sorted(set(gold) - set(classes or ()))
        if unknown:  # another label set, or a model trained on other names: every such row is wrong
            print(f"lorakit predict: warning: label(s) {', '.join(unknown)} in {data.path} are not classes of the "
                  f"model ({', '.join(classes or ())}); those rows count as wrong", file=sys.stderr)
        scores = classification_scores(got, gold)
    scored = {k: round(v, 4) for k, v in scores.items()}
    if len(rows) < len(data):
        scored["labelled"] = len(rows)
    print(json.dumps(scored), file=sys.stderr)


def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..data.glue import GLUE_TASKS

    p = subparsers.add_parser("predict", help="classify your own file, sentences, or a GLUE split with an adapter",
                              description="Without --task: a classifier trained on your own data (label names from "
                                          "labels.json in the adapter folder), on --data FILE (a text [+ text_pair] "
                                          "column, label optional: when present, accuracy, macro F1 and Matthews "
                                          "are printed), --input or --text; one label name per line. With --task: "
                                          "a GLUE task adapter on a split, --input or --text.")
    p.add_argument("--model", required=True, help="base model (short name, folder or hub id), or a fully "
                                                  "fine-tuned model folder without --adapter")
    p.add_argument("--adapter", help="adapter folder (its head is restored from modules_to_save)")
    p.add_argument("--task", choices=sorted(GLUE_TASKS), help="a GLUE task (default: your own classifier)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--split", default="dev", help="GLUE split to classify (default: dev; test for submission)")
    source.add_argument("--input", help="a text file: one input per line, a tab between the sentences of a pair")
    source.add_argument("--text", nargs="+", help="sentences to classify")
    p.add_argument("--data", help="your own file to classify (CSV, TSV, JSONL, JSON, Parquet); with --task: the "
                                  "data folder (default: $LORAKIT_DATA)")
    p.add_argument("--columns", help="map your file's column names, e.g. text=sentence,label=sentiment")
    p.add_argument("--output", type=output_file,
                   help="write predictions here, one per line (default: print them beside the inputs)")
    p.add_argument("--glue-submission", action="store_true", help="write GLUE's index<TAB>prediction format")
    p.add_argument("--batch-size", type=int_at_least(1), default=64)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--max-length", type=int_at_least(2),
                   help="without --task: tokens per input (default: 256, or the model's positions if fewer)")
    p.add_argument("--truncation", choices=["right", "left"], default="right",
                   help="without --task: which end of a longer input is cut (default: right)")
    add_quantize_flag(p)
    p.set_defaults(func=_predict)
    return p


def _benchmark_glue(args: argparse.Namespace) -> int:
    from .benchmark import benchmark_glue, check_settings, glue_markdown, glue_plot, read_benchmark_config

    config = read_benchmark_config(args.config)
    config.update({k: v for k, v in (("model", args.model), ("data", args.data)) if v})
    tasks = args.tasks or config.get("tasks") or ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    check_settings(config, tasks, ["lora", "full"] if args.full else ["lora"], args.config)
    output = Path(args.output or config.get("output", "runs/glue"))
    if args.lr_factors or args.seeds:
        return _glue_protocol(args, config, tasks, output)
    result = benchmark_glue(config, tasks, output, full=args.full)
    table = glue_markdown(result)
    atomic_write(output / "glue.md", (table + "\n").encode())
    atomic_write(output / "glue.json", (strict_json(result) + "\n").encode())
    glue_plot(result, output / "glue.png")
    print("\n" + table + f"\n\nwrote {output}/glue.md, glue.json, glue.png")
    return 0


def _glue_protocol(args: argparse.Namespace, config: dict, tasks: list[str], output: Path) -> int:
    from .protocol import glue_protocol, protocol_markdown

    result = glue_protocol(config, tasks, output, args.full, args.lr_factors or [1.0], args.seeds or [0])
    table = protocol_markdown(result)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(output / "protocol.md", (table + "\n").encode())
    atomic_write(output / "protocol.json", (strict_json(result) + "\n").encode())
    print("\n" + table + f"\n\nwrote {output}/protocol.md, protocol.json")
    return 0


def _lr_factors(text: str) -> list[float]:
    try:
        factors = [float(x) for x in text.split(",")]
    except ValueError:
        factors = []
    if not factors or not all(math.isfinite(f) and f > 0 for f in factors):
        raise argparse.ArgumentTypeError(f"comma-separated numbers above 0, e.g. 0.5,1,2; got {text!r}")
    return factors


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, e.g. 0,1,2; got {text!r}") from None


def _benchmark_sweep(args: argparse.Namespace) -> int:
    from .benchmark import benchmark_sweep, read_benchmark_config, sweep_markdown, sweep_plot

    config = read_benchmark_config(args.config)
    config.update({k: v for k, v in (("model", args.model), ("data", args.data)) if v})
    output = Path(args.output or Path(config.get("output", "runs/glue")) / "sweep")
    target_sets = [[t for t in group.split(",") if t] for group in args.targets.split(";")]
    if args.max_train_examples:  # a smaller data budget for every run of the sweep
        config.setdefault("task", {}).setdefault(args.task, {})["max_train_examples"] = args.max_train_examples
    rows = benchmark_sweep(config, args.task, args.ranks, target_sets, args.default_targets.split(","), output)
    table = sweep_markdown(rows)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(output / f"sweep-{args.task}.md", (table + "\n").encode())
    atomic_write(output / f"sweep-{args.task}.json", (strict_json(rows) + "\n").encode())
    sweep_plot(rows, output / f"sweep-{args.task}.png", args.default_targets.split(","))
    print("\n" + table + f"\n\nwrote {output}/sweep-{args.task}.md, .json, .png")
    return 0


def add_benchmark_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    bench = subparsers.add_parser("benchmark", help="multi-run benchmarks: GLUE tasks on one base, rank/target sweep")
    kinds = bench.add_subparsers(dest="benchmark", required=True)
    glue = kinds.add_parser("glue", help="one adapter per available GLUE task (and --full fine-tuning beside it): "
                                         "dev metrics, sizes, times, storage account, task switching")
    glue.add_argument("--config", required=True, help="TOML with the training settings (see configs/glue-minilm.toml)")
    glue.add_argument("--tasks", type=lambda s: s.split(","), help="comma-separated (default: the config's, or all 8)")
    glue.add_argument("--full", action="store_true", help="also fully fine-tune each task on the same budget")
    glue.add_argument("--model", help="override the config's base model")
    glue.add_argument("--data", help="data folder (default: $LORAKIT_DATA)")
    glue.add_argument("--output", help="folder for the runs and the table (default: the config's output)")
    glue.add_argument("--lr-factors", type=_lr_factors, metavar="F,F,...",
                      help="the dev protocol: search the config's learning rate times each factor (e.g. 0.5,1,2) "
                           "with the first seed, for each method alike; writes protocol.md and .json")
    glue.add_argument("--seeds", type=_seeds, metavar="S,S,...",
                      help="the dev protocol's seeds (e.g. 0,1,2): the others train at the chosen rate; mean and "
                           "spread are reported")
    glue.set_defaults(func=_benchmark_glue)
    sweep = kinds.add_parser("sweep", help="one task over LoRA ranks and target sets under one budget")
    sweep.add_argument("--config", required=True)
    sweep.add_argument("--task", required=True)
    sweep.add_argument("--ranks", type=lambda s: [int(r) for r in s.split(",")], default=[1, 2, 4, 8, 16, 64])
    sweep.add_argument("--default-targets", default="query,value", help="targets of the rank runs")
    sweep.add_argument("--targets", default="query;value;query,value;query,key,value,attention.output.dense",
                       help="target sets, ';' between sets, ',' within one (default: q; v; q,v; q,k,v,o for BERT)")
    sweep.add_argument("--max-train-examples", type=int, help="train every run on this seeded subset")
    sweep.add_argument("--model", help="override the config's base model")
    sweep.add_argument("--data", help="data folder (default: $LORAKIT_DATA)")
    sweep.add_argument("--output", help="folder (default: <config output>/sweep)")
    sweep.set_defaults(func=_benchmark_sweep)
    return bench
