"""``lorakit predict``: classify sentences, a file, or a GLUE split with a task adapter (or a fully
fine-tuned model), batched, with a progress bar."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.common import DataFormatError, read_lines
from ..data.glue import GlueExample


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
    from ..metrics.glue import glue_scores
    from .predict import load_classifier, predict, write_predictions

    model, tokenizer = load_classifier(args.model, args.task, args.adapter)
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


def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..data.glue import GLUE_TASKS

    p = subparsers.add_parser("predict", help="classify sentences, a file or a GLUE split with a task adapter")
    p.add_argument("--model", required=True, help="base model (short name, folder or hub id), or a fully "
                                                  "fine-tuned model folder without --adapter")
    p.add_argument("--adapter", help="adapter folder (its head is restored from modules_to_save)")
    p.add_argument("--task", required=True, choices=sorted(GLUE_TASKS))
    source = p.add_mutually_exclusive_group()
    source.add_argument("--split", default="dev", help="GLUE split to classify (default: dev; test for submission)")
    source.add_argument("--input", help="a text file: one input per line, a tab between the sentences of a pair")
    source.add_argument("--text", nargs="+", help="sentences to classify")
    p.add_argument("--data", help="data folder (default: $LORAKIT_DATA)")
    p.add_argument("--output", help="write predictions here (default: print them)")
    p.add_argument("--glue-submission", action="store_true", help="write GLUE's index<TAB>prediction format")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_predict)
    return p


def _benchmark_glue(args: argparse.Namespace) -> int:
    from .benchmark import benchmark_glue, glue_markdown, glue_plot, read_benchmark_config

    config = read_benchmark_config(args.config)
    config.update({k: v for k, v in (("model", args.model), ("data", args.data)) if v})
    tasks = args.tasks or config.get("tasks") or ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    output = Path(args.output or config.get("output", "runs/glue"))
    result = benchmark_glue(config, tasks, output, full=args.full)
    table = glue_markdown(result)
    (output / "glue.md").write_text(table + "\n")
    (output / "glue.json").write_text(json.dumps(result, indent=2) + "\n")
    glue_plot(result, output / "glue.png")
    print("\n" + table + f"\n\nwrote {output}/glue.md, glue.json, glue.png")
    return 0


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
    (output / f"sweep-{args.task}.md").write_text(table + "\n")
    (output / f"sweep-{args.task}.json").write_text(json.dumps(rows, indent=2) + "\n")
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
