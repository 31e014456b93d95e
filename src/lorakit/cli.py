"""``lorakit`` command line: thin sub-commands over the library.

Sub-commands import what they run inside their handlers, so ``lorakit --help`` and a mistyped flag answer at
once instead of after loading torch and transformers. Elsewhere in the package, imports inside functions are
kept for optional or slow third-party packages only (the ``metrics``, ``serve`` and ``plots`` extras,
``datasets``, scikit-learn).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import sys
import typing
from pathlib import Path

from .train.config import TrainConfig, parse_flags


def _info(args: argparse.Namespace) -> int:
    from .adapters import read_adapter

    config, tensors, meta = read_adapter(args.adapter)
    params = sum(t.numel() for t in tensors.values())
    print(f"{args.adapter}: r={config.r} alpha={config.lora_alpha} targets={config.target_modules} "
          f"bias={config.bias} modules_to_save={config.modules_to_save}")
    print(f"{len(tensors)} tensors, {params:,} parameters; made by {'lorakit' if meta else 'PEFT or another tool'}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .data.glue import GLUE_TASKS
    from .metrics import LABEL_METRICS, require_metrics
    from .recipes import setup
    from .train.trainer import check_fresh_start

    flags = parse_flags({f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    config = TrainConfig.from_file(args.config, **flags) if args.config else TrainConfig.from_flags(**flags)
    if not args.resume:  # before loading anything: an existing run is never overwritten
        check_fresh_start(Path(config.output), int(os.environ.get("WORLD_SIZE", "1")))
    if config.task in GLUE_TASKS:  # the run ends with its dev scores (_score_dev): refused now, not after training
        require_metrics(f"{config.task}'s dev scores", LABEL_METRICS)
    parts = setup(config)
    trainer = parts.trainer()
    summary = trainer.fit(resume=args.resume)
    if trainer.procs.main:
        loss, speed = summary["final_loss"], summary["tokens_per_s"]
        why = {"time_budget": "on the time budget", "signal": "by a signal"}.get(summary.get("stopped_by") or "")
        ended = (f"stopped {why} after {summary['steps']} of {summary['planned_steps']} steps" if why
                 else f"done: {summary['steps']} steps")
        print(f"{ended} in {summary['seconds']:.0f} s"
              + (f", final loss {loss:.3f}, {speed:.0f} tokens/s" if loss is not None else "")
              + f"; run folder {summary['output']}")
        if summary.get("best_step") is not None:
            print(f"best {summary['best_metric']} {summary['best_value']:.4g} at step {summary['best_step']}: "
                  f"{trainer.best_dir()}")
        if parts.task is not None and parts.task.model_kind == "sequence-classification":
            _score_dev(trainer, config)
        elif config.samples and parts.model_kind == "causal-lm":
            _show_generations(parts, trainer)
    return 0


def _show_generations(parts, trainer) -> None:
    """A few greedy validation outputs from what a user loads next: a fresh base plus the saved adapter."""
    from .samples import reload_and_merge, show_generations

    config = parts.config
    try:
        prompts, refs = parts.validation_prompts(config.samples)
        if not prompts:
            return
        model = trainer.model
        if not config.full_finetune:
            model = reload_and_merge(trainer.model, trainer.tokenizer, config.model, trainer.result_dir(),
                                     config.name, prompts[0])
        print(f"\ngreedy generations on {parts.title} validation inputs:")
        show_generations(model, trainer.tokenizer, prompts, refs)
    except (OSError, ValueError) as err:  # the run itself succeeded and is saved
        print(f"  (no generations: {err})")


def _score_dev(trainer, config: TrainConfig) -> None:
    """GLUE runs end with the dev metrics, saved beside the adapter as ``dev_scores.json``."""
    import json

    from .nlu import evaluate_glue

    try:
        scores = evaluate_glue(trainer.model, trainer.tokenizer, config.task, "dev", config.data)
    except (OSError, ValueError) as err:  # the run itself succeeded and is saved
        print(f"  (no dev scores: {err})")
        return
    (trainer.output / "dev_scores.json").write_text(json.dumps(scores) + "\n")
    print(f"{config.task} dev: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))


def field_notes() -> dict[str, str]:
    """The comment after each TrainConfig field in its source: what ``--help`` says of the flag, so the
    file's settings and the flags are described in one place."""
    notes = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        match = re.match(r"\s+(\w+): [^#]+#\s*(.+)$", line)
        if match:
            notes[match[1]] = match[2]
    return notes


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (defaults stay None so a --config file is only overridden on purpose).
    Values stay text here: ``parse_flags`` and TrainConfig check them, so a bad one is a one-line error
    naming the flag instead of argparse's usage dump."""
    hints, notes = typing.get_type_hints(TrainConfig), field_notes()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        note = notes.get(f.name, "")
        if hint is bool and f.default is False:
            parser.add_argument(flag, action="store_true", default=None, help=f"{note} (default: off)".strip())
        elif hint is bool:
            parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", default=None,
                                help=f"turn off: {note}" if note else None)
        elif f.name == "target_modules":
            parser.add_argument(flag, default=None, help="comma-separated module names (default: the architecture's)")
        elif f.name == "time_budget":
            parser.add_argument(flag, default=None, metavar="DURATION",
                                help="stop after the step that spends it, e.g. 90s, 6m, 1h; plain number: seconds; "
                                     "off: none (default: none)")
        elif typing.get_origin(hint) is typing.Literal:
            parser.add_argument(flag, default=None, metavar="{" + ",".join(typing.get_args(hint)) + "}",
                                help=f"{note} (default: {f.default})".strip())
        else:
            parser.add_argument(flag, default=None, help=f"{note} (default: {f.default})".strip())


def _models(args: argparse.Namespace) -> int:
    from .models import list_models

    for info in list_models():
        print(f"{info.name:14} {info.source:13} {info.location:45} {info.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorakit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a model with LoRA (or fully) on a task; resumable, torchrun-ready")
    train.add_argument("--config", help="JSON or TOML file with TrainConfig settings; flags override it")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    _add_config_flags(train)
    train.set_defaults(func=_train)

    from .decode.cli import add_generate_parser
    from .metrics.cli import add_evaluate_parser, add_metrics_parser
    from .nlu.cli import add_benchmark_parser, add_predict_parser
    from .serve.cli import add_serve_parser

    add_generate_parser(sub)
    add_serve_parser(sub)
    add_metrics_parser(sub)
    add_evaluate_parser(sub)
    add_predict_parser(sub)
    add_benchmark_parser(sub)

    models = sub.add_parser("models", help="list the short model names and where their weights come from")
    models.set_defaults(func=_models)

    info = sub.add_parser("info", help="describe an adapter folder (lorakit or PEFT)")
    info.add_argument("adapter")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, RuntimeError, KeyError, ImportError) as err:
        print(f"lorakit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
