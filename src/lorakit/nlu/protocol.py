"""``lorakit benchmark glue --lr-factors ... --seeds ...``: GLUE's dev protocol, the same for both methods.

Per task and method: train at the config's learning rate times each factor with the first seed, keep the
rate whose dev score (the task's main metric) is highest, then train the other seeds at that rate and report
their mean and spread. LoRA and full fine-tuning get the same factors and seeds, so neither is tuned more
than the other. The rate is chosen on dev and the scores are dev scores, as in GLUE dev tables (the paper's
included); the spread over seeds is what says whether a difference of a point means anything.

Every run is ``run_training``'s: an ordinary ``lorakit train`` process in its own folder,
``<task>-<method>-<lr>-s<seed>``, reused when finished, so the protocol can be stopped and resumed.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from ..data.glue import glue_spec
from ..train.config import TrainConfig
from .benchmark import run_training, settings_for, trainable_tasks


def lr_tag(lr: float) -> str:
    """A learning rate as a short folder-name part (up to 7 significant digits): 5e-4, 1.5e-4, 2e-5."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def search_then_seeds(settings: dict[str, Any], lr_factors: list[float], seeds: list[int],
                      output: Path) -> dict[str, Any]:
    """One task and method: the learning-rate search on ``seeds[0]``, then the other seeds at the best rate.

    Ties go to the first factor given; a run whose score is not a number (STS-B's correlations of a constant
    prediction) never wins. The chosen rate's first-seed run is one of the seeds averaged."""
    task, method = settings["task"], "full" if settings.get("full_finetune") else "lora"
    metric = glue_spec(task).metrics[0]
    base_lr = settings.get("lr", TrainConfig.lr)

    def run(lr: float, seed: int) -> dict[str, Any]:
        folder = output / f"{task}-{method}-{lr_tag(lr)}-s{seed}"
        row = run_training({**settings, "lr": lr, "seed": seed}, folder)
        if metric not in row["scores"]:
            raise ValueError(f"{folder / 'dev_scores.json'}: no {metric!r} score (the run finished, its scoring did "
                             "not): delete the folder to train and score it again")
        return {"lr": lr, "seed": seed, "score": row["scores"][metric], **row}

    search = [run(base_lr * factor, seeds[0]) for factor in lr_factors]
    scored = [r for r in search if math.isfinite(r["score"])]
    if not scored:
        raise ValueError(f"{task} ({method}): every run of the learning-rate search scored {metric} NaN")
    best = max(scored, key=lambda r: r["score"])  # the first of equal scores: the order of the factors
    runs = [best] + [run(best["lr"], seed) for seed in seeds[1:]]
    scores, rates = [r["score"] for r in runs], [r["lr"] for r in search]
    return {"task": task, "method": method, "metric": metric, "search": search, "lr": best["lr"],
            "edge_of_grid": len(rates) > 1 and best["lr"] in (min(rates), max(rates)), "runs": runs,
            "mean": statistics.fmean(scores), "stdev": statistics.stdev(scores) if len(scores) > 1 else None}


def glue_protocol(config: dict[str, Any], tasks: list[str], output: Path, full: bool, lr_factors: list[float],
                  seeds: list[int]) -> dict[str, Any]:
    """Every available task (train and dev files present) through ``search_then_seeds``, for LoRA and with
    ``full`` for full fine-tuning too, and per task LoRA's mean minus full fine-tuning's."""
    if not lr_factors or not seeds:
        raise ValueError("the protocol needs at least one learning-rate factor and one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds repeats a seed: {seeds}")
    if len({lr_tag(f) for f in lr_factors}) != len(lr_factors):
        raise ValueError(f"--lr-factors repeats a factor: {lr_factors}")
    if not all(math.isfinite(f) and f > 0 for f in lr_factors):
        raise ValueError(f"--lr-factors must be finite and above 0, got {lr_factors}")
    available, skipped = trainable_tasks(tasks, config.get("data"))
    methods = ["lora", "full"] if full else ["lora"]
    rows = [search_then_seeds(settings_for(config, task, method), lr_factors, seeds, output)
            for task in available for method in methods]
    gaps = {}
    for task in available:
        by_method = {r["method"]: r for r in rows if r["task"] == task}
        if len(by_method) == 2:
            gap = by_method["lora"]["mean"] - by_method["full"]["mean"]
            gaps[task] = {"lora_minus_full": gap, "at_most_a_point_behind": gap >= -1.0}
    return {"lr_factors": lr_factors, "seeds": seeds, "rows": rows, "gaps": gaps,
            "skipped": skipped}


def protocol_markdown(result: dict[str, Any]) -> str:
    """``glue_protocol``'s result as the tables of ``protocol.md``."""
    seeds = result["seeds"]
    lines = [f"Learning rate searched with seed {seeds[0]} over the config's rate x "
             f"{', '.join(f'{f:g}' for f in result['lr_factors'])}; then seeds {', '.join(map(str, seeds))} at the "
             "best rate (ties: the first factor). Dev scores x100; mean and sample standard deviation over the "
             "seeds. * marks a rate at the edge of the grid.", "",
             "| task | method | search: lr -> dev | chosen lr | dev per seed | mean ± sd |",
             "| --- | --- | --- | ---: | --- | ---: |"]
    for r in result["rows"]:
        search = ", ".join(f"{lr_tag(s['lr'])} -> {s['score']:.2f}" for s in r["search"])
        per_seed = ", ".join(f"{s['score']:.2f}" for s in r["runs"])
        spread = f"{r['mean']:.2f} ± {r['stdev']:.2f}" if r["stdev"] is not None else f"{r['mean']:.2f} (1 seed)"
        lines.append(f"| {r['task']} ({r['metric']}) | {'LoRA' if r['method'] == 'lora' else 'full FT'} | {search} "
                     f"| {lr_tag(r['lr'])}{' *' if r['edge_of_grid'] else ''} | {per_seed} | {spread} |")
    if result["gaps"]:
        lines += ["", "| task | LoRA mean - full FT mean | LoRA at most a point behind |", "| --- | ---: | --- |"]
        lines += [f"| {task} | {g['lora_minus_full']:+.2f} | {'yes' if g['at_most_a_point_behind'] else 'no'} |"
                  for task, g in result["gaps"].items()]
    return "\n".join(lines)
