"""``lorakit benchmark glue`` and ``lorakit benchmark sweep``: many training runs on one base, one table.

Every run is an ordinary ``lorakit train`` in its own process (so each run's peak memory is its own) with
its own run folder; a run that already finished is reused and an interrupted one resumes, so a long
benchmark can be stopped and started again. Sizes are measured on disk, times come from the runs' logs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from ..data.common import data_root
from ..data.glue import glue_file, glue_spec
from ..data.user.formats import did_you_mean
from ..files import folder_bytes
from ..models import load_model
from ..tasks import get_task
from ..train.config import TrainConfig
from ..train.logs import MetricsLog
from ..train.trainer import stopped_part_way
from .multitask import MultiTaskClassifier
from .predict import load_classifier, predict_logits, to_predictions

# settings that do not change what a run learns: a finished run with other values is still reusable
NOT_LEARNED = frozenset({"output", "data", "log_every", "save_every", "keep_checkpoints", "samples", "eval_every",
                         "eval_generate", "max_eval_examples", "eval_metric", "time_budget"})
LORA_ONLY = frozenset({"lora_rank", "lora_alpha", "lora_dropout", "target_modules", "rslora"})


def check_reusable(output: Path, config: TrainConfig) -> None:
    """A finished run is reused by its folder: refuse it if it learned with other settings than ``config``'s
    (another model, rate, seed, epochs...), rather than report it under the wrong ones."""
    saved_path = output / "run_config.json"
    if not saved_path.is_file():
        return
    saved = json.loads(saved_path.read_text())
    for key, wanted in config.to_dict().items():
        if key in NOT_LEARNED or (config.full_finetune and key in LORA_ONLY):
            continue
        have = saved.get(key)
        same = (math.isclose(have, wanted, rel_tol=1e-9) if isinstance(have, float) and isinstance(wanted, float)
                else have == wanted)
        if not same:
            raise ValueError(f"{output}: a finished run with {key} = {have!r}, but {wanted!r} was asked for: "
                             "delete the folder to train it again, or choose another --output")


def run_training(settings: dict[str, Any], output: Path) -> dict[str, Any]:
    """Train (or reuse, or resume) one run; returns its summary, dev scores and measured sizes."""
    done = output / "summary.json"
    config = TrainConfig(**{**settings, "output": str(output), "samples": 0})
    # a run a time budget or a signal stopped is not done: it resumes (and its summary is written anew at its end)
    finished = done.is_file() and not stopped_part_way(json.loads(done.read_text()))
    if finished:
        check_reusable(output, config)
    else:
        resume = (output / "checkpoints").is_dir() and any((output / "checkpoints").iterdir())
        if output.exists() and not resume:
            shutil.rmtree(output)  # started but not even one checkpoint: nothing to keep
        output.mkdir(parents=True, exist_ok=True)
        config_path = output / "benchmark_config.json"
        config_path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        cmd = [sys.executable, "-m", "lorakit.cli", "train", "--config", str(config_path),
               *(["--resume"] if resume else [])]
        print(f"\n$ lorakit train --config {config_path}" + (" --resume" if resume else ""), flush=True)
        if (code := subprocess.run(cmd).returncode) != 0:
            raise RuntimeError(f"lorakit train for {output} failed (exit status {code}; its error is above); "
                               "finished runs are kept and reused when the command runs again")
    summary = json.loads(done.read_text())
    scores_path = output / "dev_scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
    log = MetricsLog(output / "log.jsonl").read()
    saved = output / ("model" if settings.get("full_finetune") else "adapter")
    return {"run": str(output), "scores": scores, "trainable_params": summary["trainable_params"],
            "saved_bytes": folder_bytes(saved), "steps": summary["steps"], "train_seconds": log[-1]["elapsed_s"],
            "s_per_step": log[-1]["elapsed_s"] / log[-1]["step"], "peak_mem_mb": summary["peak_mem_mb"]}


def read_benchmark_config(path: str | os.PathLike) -> dict[str, Any]:
    """TOML: top-level TrainConfig settings for every run, ``[lora]`` and ``[full]`` for one method,
    ``[task.<name>]`` for one task and ``[task.<name>.lora]`` / ``[task.<name>.full]`` for both. Its layout
    and keys are checked here, naming the file and table: a misspelled key would otherwise be dropped (it
    names no training setting) and every run would train with the default."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file ({err.reason} at byte {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: {err}") from None
    _check_layout(data, str(path))
    return data


def _check_layout(config: dict[str, Any], where: str) -> None:
    known = set(TrainConfig.__dataclass_fields__)

    def check_keys(table: Any, place: str, tables: tuple[str, ...] = ()) -> None:
        if not isinstance(table, dict):
            raise ValueError(f"{where}: {place} must be a table of training settings, got {table!r}")
        for key in table:
            if key not in known and key not in tables:
                raise ValueError(f"{where}: {place}unknown setting {key!r}{did_you_mean(key, known | set(tables))}")

    if "task" in config and not isinstance(config["task"], dict):
        raise ValueError(f"{where}: 'task' holds [task.<name>] tables of one task's settings; the tasks to run "
                         f"are tasks = [...], got task = {config['task']!r}")
    tasks = config.get("tasks")
    if tasks is not None and (not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks)):
        raise ValueError(f"{where}: tasks must be a list of GLUE task names, e.g. tasks = [\"rte\"], got {tasks!r}")
    for task in [*(tasks or []), *config.get("task", {})]:
        try:
            glue_spec(task)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    check_keys({k: v for k, v in config.items() if k not in ("tasks", "lora", "full", "task")}, "")
    for method in ("lora", "full"):
        check_keys(config.get(method, {}), f"[{method}] ")
    for task, table in config.get("task", {}).items():
        check_keys(table, f"[task.{task}] ", ("lora", "full"))
        for method in ("lora", "full"):
            check_keys(table.get(method, {}), f"[task.{task}.{method}] ")


def check_settings(config: dict[str, Any], tasks: list[str], methods: list[str], where: str) -> None:
    """Every run's settings checked as ``lorakit train`` will check them, before the first one trains."""
    for task in tasks:
        for method in methods:
            try:
                TrainConfig(**settings_for(config, task, method))
            except ValueError as err:
                raise ValueError(f"{where}: {task} ({method}): {err}") from None


def settings_for(config: dict[str, Any], task: str, method: str) -> dict[str, Any]:
    known = set(TrainConfig.__dataclass_fields__)
    common = {k: v for k, v in config.items() if k in known and k not in ("task", "output")}
    per_task = config.get("task", {}).get(task, {})
    merged = {**common, **config.get(method, {}), **{k: v for k, v in per_task.items() if k in known},
              **per_task.get(method, {}), "task": task, "full_finetune": method == "full"}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"unknown training setting {unknown[0]!r} for {task} ({method})")
    return merged


# ------------------------------------------------------------------------------------------------ glue


def trainable_tasks(tasks: list[str], root: str | None) -> tuple[list[str], list[str]]:
    """(tasks with train and dev files under ``root``, the others: said, then skipped rather than failed)."""
    available = [t for t in tasks if glue_file(t, "train", root).is_file() and glue_file(t, "dev", root).is_file()]
    skipped = [t for t in tasks if t not in available]
    if skipped:
        print(f"skipping {', '.join(skipped)}: no train and dev files under {data_root(root) / 'glue'}")
    return available, skipped


def benchmark_glue(config: dict[str, Any], tasks: list[str], output: Path, full: bool,
                   switch_repeats: int = 200) -> dict[str, Any]:
    root = config.get("data")
    available, skipped = trainable_tasks(tasks, root)
    methods = ["lora", "full"] if full else ["lora"]
    rows = []
    for task in available:
        for method in methods:
            row = run_training(settings_for(config, task, method), output / f"{task}-{method}")
            rows.append({"task": task, "method": method, "metric": glue_spec(task).metrics[0], **row})
    result: dict[str, Any] = {"rows": rows, "skipped": skipped}
    result["storage"] = storage_account(config.get("model", "minilm-l6"), rows, output)
    result["switching"] = switching_check(config.get("model", "minilm-l6"), rows, root, switch_repeats)
    return result


def storage_account(model: str, rows: list[dict[str, Any]], output: Path) -> dict[str, Any]:
    """N fully fine-tuned models against one base plus N adapters, from sizes on disk."""
    base_dir = output / "base-model"
    if not base_dir.is_dir():  # the base as save_pretrained writes it: the same format as a full run's model
        net, tokenizer = load_model(model, "sequence-classification")
        net.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
    lora = [r for r in rows if r["method"] == "lora"]
    full = [r for r in rows if r["method"] == "full"]
    account = {"tasks": len(lora), "base_bytes": folder_bytes(base_dir),
               "adapter_bytes": sum(r["saved_bytes"] for r in lora)}
    account["base_plus_adapters_bytes"] = account["base_bytes"] + account["adapter_bytes"]
    if full:
        account["full_models_bytes"] = sum(r["saved_bytes"] for r in full)
    return account


def switching_check(model: str, rows: list[dict[str, Any]], root: str | None, repeats: int) -> dict[str, Any]:
    """All task adapters in one model: switch latency, and each task's dev outputs against its adapter
    loaded alone into a fresh base."""
    adapters = {r["task"]: Path(r["run"]) / "adapter" for r in rows if r["method"] == "lora"}
    if len(adapters) < 2:
        return {}
    multi = MultiTaskClassifier(model, adapters)
    order = list(adapters)
    times = [multi.switch(order[i % len(order)]) for i in range(repeats)]
    checks = {}
    for task, folder in adapters.items():
        examples = get_task(task).examples("dev", root)
        together = multi.logits(task, examples)
        alone_model, tokenizer = load_classifier(model, task, folder)
        alone = predict_logits(alone_model, tokenizer, task, examples)
        checks[task] = {"max_abs_logit_diff": float((together - alone).abs().max()),
                        "same_predictions": to_predictions(task, together) == to_predictions(task, alone)}
    return {"adapters_loaded": len(adapters), "switch_ms_median": statistics.median(times) * 1e3,
            "switch_ms_max": max(times) * 1e3, "switches": repeats, "per_task": checks}


def glue_markdown(result: dict[str, Any]) -> str:
    lines = ["| task | method | dev metric | all dev metrics | trainable params | saved size | training | s/step "
             "| peak memory |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in r["scores"].items())
        lines.append(f"| {r['task']} | {'LoRA' if r['method'] == 'lora' else 'full FT'} | "
                     f"{r['scores'].get(r['metric'], float('nan')):.2f} ({r['metric']}) | {metrics} | "
                     f"{r['trainable_params']:,} | {r['saved_bytes'] / 2**20:,.2f} MB | {r['steps']:,} steps, "
                     f"{r['train_seconds'] / 60:.1f} min | {r['s_per_step']:.3f} | {r['peak_mem_mb']:,.0f} MB |")
    s = result["storage"]
    lines += ["", f"Storage for {s['tasks']} tasks: one base ({s['base_bytes'] / 2**20:,.1f} MB) + adapters "
              f"({s['adapter_bytes'] / 2**20:,.2f} MB) = {s['base_plus_adapters_bytes'] / 2**20:,.1f} MB"]
    if "full_models_bytes" in s:
        lines[-1] += (f"; {s['tasks']} fully fine-tuned models = {s['full_models_bytes'] / 2**20:,.1f} MB "
                      f"({s['full_models_bytes'] / s['base_plus_adapters_bytes']:.2f}x)")
    sw = result.get("switching")
    if sw:
        worst = max(c["max_abs_logit_diff"] for c in sw["per_task"].values())
        same = all(c["same_predictions"] for c in sw["per_task"].values())
        lines += ["", f"Task switching with {sw['adapters_loaded']} adapters loaded in one model: median "
                  f"{sw['switch_ms_median']:.3f} ms, max {sw['switch_ms_max']:.3f} ms over {sw['switches']} "
                  f"switches; dev logits against each adapter loaded alone: max |diff| {worst:.2e}, "
                  f"predictions {'identical' if same else 'DIFFERENT'} on every task."]
    return "\n".join(lines)


def glue_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in result["rows"]))
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        rows = {r["task"]: r for r in result["rows"] if r["method"] == method}
        xs = [i + k * width for i in range(len(tasks))]
        label = "LoRA" if method == "lora" else "full fine-tuning"
        axes[0].bar(xs, [rows[t]["scores"].get(rows[t]["metric"], 0) for t in tasks], width, label=label)
        axes[1].bar(xs, [rows[t]["saved_bytes"] / 2**20 for t in tasks], width, label=label)
        axes[2].bar(xs, [rows[t]["peak_mem_mb"] for t in tasks], width, label=label)
    for ax, title in zip(axes, ("dev metric (x100)", "checkpoint size (MB, log)", "peak memory (MB)"), strict=True):
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(tasks))], tasks)
        ax.set_title(title)
        ax.legend()
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ sweep


def benchmark_sweep(config: dict[str, Any], task: str, ranks: list[int], target_sets: list[list[str]],
                    default_targets: list[str], output: Path) -> list[dict[str, Any]]:
    """Ranks with the default targets, then target sets at the config's rank: same budget for every run."""
    base = settings_for(config, task, "lora")
    runs = [(r, default_targets) for r in ranks]
    runs += [(base.get("lora_rank", 8), t) for t in target_sets if (base.get("lora_rank", 8), t) not in runs]
    rows = []
    for rank, targets in runs:
        name = f"{task}-r{rank}-{'+'.join(targets)}"
        row = run_training({**base, "lora_rank": rank, "target_modules": targets}, output / name)
        rows.append({"task": task, "rank": rank, "targets": targets, **row})
    return rows


def sweep_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| rank | targets | dev metrics | trainable params | adapter size | training |",
             "| ---: | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in r["scores"].items())
        lines.append(f"| {r['rank']} | {', '.join(r['targets'])} | {metrics} | {r['trainable_params']:,} | "
                     f"{r['saved_bytes'] / 2**10:,.0f} KB | {r['train_seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def sweep_plot(rows: list[dict[str, Any]], path: Path, default_targets: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next(iter(rows[0]["scores"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ranked = [r for r in rows if r["targets"] == default_targets]
    ax.plot([r["trainable_params"] for r in ranked], [r["scores"][metric] for r in ranked], "o-",
            label=f"ranks on {','.join(default_targets)}")
    for r in ranked:
        ax.annotate(f"r={r['rank']}", (r["trainable_params"], r["scores"][metric]), fontsize=8)
    others = [r for r in rows if r["targets"] != default_targets]
    ax.scatter([r["trainable_params"] for r in others], [r["scores"][metric] for r in others], color="tab:red",
               label="target sets at one rank", zorder=3)
    for r in others:
        ax.annotate(",".join(t.split(".")[-1] for t in r["targets"]), (r["trainable_params"], r["scores"][metric]),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (LoRA + head)")
    ax.set_ylabel(f"{rows[0]['task']} dev {metric} (x100)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
