"""LoRA against full fine-tuning (or any runs against each other), side by side: quality, trainable parameters,
size on disk, peak memory and time per step, as a Markdown table, a JSON file and a bar-chart PNG.

Quality comes from each finished run folder (a scores JSON written by ``lorakit evaluate --json``), as do its
training time and size on disk. Peak memory and time per step are measured again here, in one sitting and
one configuration after the other, so the runs are compared on the same idle machine: each run's own
``run_config.json`` is trained for ``--probe-steps`` steps (the same first batches, since the seed is the
same) in a fresh process, and its peak memory (process peak RSS on the CPU, peak allocated on a GPU) and
median step time after two warm-up steps are read from that probe's log.

    python benchmarks/compare_runs.py runs/e2e-lora runs/e2e-full --names LoRA "full fine-tuning" \
        --scores dev_beam_scores.json dev_greedy_scores.json --score-labels beam greedy --probe-steps 30 \
        --output docs/results/e2e-lora-vs-full
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from safetensors import safe_open

from lorakit.files import folder_bytes
from lorakit.train.logs import MetricsLog


def saved_parameters(folder: Path) -> int:
    """Parameters in the saved weights: the trainable ones for an adapter, the whole model for full FT."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    return total


def flat_scores(scores: dict[str, Any]) -> dict[str, float]:
    """WebNLG scores come per category: compare on "all"."""
    if all(isinstance(v, dict) for v in scores.values()):
        scores = scores.get("all") or next(iter(scores.values()))
    return {k: v for k, v in scores.items() if isinstance(v, int | float)}


def read_scores(run: Path, names: list[str], labels: list[str]) -> dict[str, float]:
    """Each scores file's metrics; with several files (e.g. beam and greedy decoding), labelled columns."""
    scores: dict[str, float] = {}
    for name, label in zip(names, labels, strict=True):
        path = run / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no scores (`lorakit evaluate PREDICTIONS --task T --json > FILE`)")
        for metric, value in flat_scores(json.loads(path.read_text())).items():
            scores[f"{metric} ({label})" if len(names) > 1 else metric] = value
    return scores


def read_run(run: Path, scores_names: list[str], labels: list[str]) -> dict[str, Any]:
    config = json.loads((run / "run_config.json").read_text())
    log = MetricsLog(run / "log.jsonl").read()
    saved = run / ("model" if config["full_finetune"] else "adapter")
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {
        "run": str(run), "config": config, "scores": read_scores(run, scores_names, labels),
        "trainable_params": summary.get("trainable_params") or saved_parameters(saved),
        "saved_bytes": folder_bytes(saved), "steps": log[-1]["step"], "train_seconds": log[-1]["elapsed_s"],
    }


def probe(run: Path, steps: int, workdir: Path) -> dict[str, float]:
    """Train the run's own config for a few steps in a fresh process; peak memory and median step time."""
    out = workdir / run.name
    cmd = [sys.executable, "-m", "lorakit.cli", "train", "--config", str(run / "run_config.json"),
           "--output", str(out), "--max-steps", str(steps), "--save-every", str(steps), "--log-every", "1",
           "--samples", "0"]
    print("probe:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    log = MetricsLog(out / "log.jsonl").read()
    times = [b["elapsed_s"] - a["elapsed_s"] for a, b in itertools.pairwise(log[2:])]  # 2 warm-up steps
    return {"peak_mem_mb": log[-1]["peak_mem_mb"], "s_per_step": statistics.median(times)}


def markdown(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    head = ["run", *metrics, "trainable params", "saved size", "peak memory", "s/step (probe)",
            "training (steps, time)"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in rows:
        cells = [r["name"], *(f"{r['scores'].get(m, float('nan')):.4f}" for m in metrics),
                 f"{r['trainable_params']:,}", f"{r['saved_bytes'] / 2**20:,.1f} MB", f"{r['peak_mem_mb']:,.0f} MB",
                 f"{r['s_per_step']:.2f}", f"{r['steps']:,} steps, {r['train_seconds'] / 60:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> str:
    """Every run against the last one (put full fine-tuning last)."""
    ref = rows[-1]
    out = []
    for r in rows[:-1]:
        def ratio(key: str, digits: int, r: dict[str, Any] = r) -> str:
            return f"{r[key] / ref[key]:.{digits}f}x"

        out.append(f"{r['name']} / {ref['name']}: trainable params {ratio('trainable_params', 4)}, saved size "
                   f"{ratio('saved_bytes', 4)}, peak memory {ratio('peak_mem_mb', 2)}, time per step "
                   f"{ratio('s_per_step', 2)}")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], metrics: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, [r["scores"].get(m, 0.0) for r in rows], False) for m in metrics] + [
        ("trainable params", [r["trainable_params"] for r in rows], True),
        ("saved size (MB)", [r["saved_bytes"] / 2**20 for r in rows], True),
        ("peak memory (MB)", [r["peak_mem_mb"] for r in rows], False),
        ("s/step", [r["s_per_step"] for r in rows], False)]
    cols = 5 if len(panels) <= 10 else 7
    lines = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(3.2 * cols, 3.0 * lines), squeeze=False)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for ax, (title, values, log) in zip(axes.flat, panels, strict=False):
        ax.bar(range(len(rows)), values, color=colors[:len(rows)])
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(rows)), [r["name"] for r in rows], fontsize=8)
        if log:
            ax.set_yscale("log")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (put the reference run last)")
    parser.add_argument("--names", nargs="+", help="a label per run (default: folder names)")
    parser.add_argument("--scores", nargs="+", default=["dev_scores.json"],
                        help="scores file(s) inside each run folder (several: one column group each)")
    parser.add_argument("--score-labels", nargs="+", help="a label per scores file (default: the file names)")
    parser.add_argument("--probe-steps", type=int, default=40)
    parser.add_argument("--output", type=Path, required=True, help="writes OUTPUT.md, OUTPUT.json, OUTPUT.png")
    args = parser.parse_args()
    names = args.names or [r.name for r in args.runs]
    if len(names) != len(args.runs):
        parser.error(f"{len(names)} names for {len(args.runs)} runs")
    labels = args.score_labels or [Path(s).stem for s in args.scores]
    if len(labels) != len(args.scores):
        parser.error(f"{len(labels)} score labels for {len(args.scores)} scores files")
    rows = [{"name": n, **read_run(r, args.scores, labels)} for n, r in zip(names, args.runs, strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        for row, run in zip(rows, args.runs, strict=True):
            row.update(probe(run, args.probe_steps, Path(tmp)))
    metrics = list(dict.fromkeys(m for r in rows for m in r["scores"]))
    table = markdown(rows, metrics)
    summary = ratios(rows)
    print(table, summary, sep="\n\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".md").write_text(table + "\n\n" + summary + "\n")
    args.output.with_suffix(".json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    plot(rows, metrics, args.output.with_suffix(".png"))
    print(f"wrote {args.output}.md, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
