"""``lorakit train --data FILE``: the user's own file through the same recipe and loop as the built-in tasks,
evaluated while training (best/, early stopping, exact resume)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import write_e2e, write_tiny_bert, write_tiny_llama

from lorakit.cli import main
from lorakit.recipes import build_trainer, setup
from lorakit.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from e2e_to_jsonl import rows as e2e_rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user-train")
    write_e2e(root / "data", rows=48)
    write_tiny_llama(root / "tiny-llama")
    for split in ("train", "dev"):
        with (root / f"e2e-{split}.jsonl").open("w") as f:
            for record in e2e_rows(split, str(root / "data")):
                f.write(json.dumps(record) + "\n")
    return root


def _common(workspace: Path, output: Path) -> list[str]:
    return ["--model", str(workspace / "tiny-llama"), "--output", str(output), "--lora-rank", "4",
            "--lora-dropout", "0", "--batch-size", "8", "--lr", "1e-2", "--warmup-steps", "1", "--log-every", "1",
            "--save-every", "100", "--max-steps", "5", "--samples", "0"]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def _evals(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "eval" in r]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def test_e2e_as_a_users_jsonl_trains_exactly_like_the_builtin_task(workspace, tmp_path):
    """The proof that the generic path is right: same samples, same plan, same losses, same adapter."""
    assert main(["train", "--task", "e2e", "--data", str(workspace / "data"), *_common(workspace, tmp_path / "a")]) == 0
    assert main(["train", "--data", str(workspace / "e2e-train.jsonl"), *_common(workspace, tmp_path / "b")]) == 0
    assert len(_losses(tmp_path / "a")) == 5 and _losses(tmp_path / "a") == _losses(tmp_path / "b")
    a, b = _tensors(tmp_path / "a/adapter"), _tensors(tmp_path / "b/adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_during_training_keeps_the_best_and_logs_it(workspace, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(workspace / "e2e-train.jsonl"), "--eval-data", str(workspace / "e2e-dev.jsonl"),
                 "--eval-every", "2", "--eval-generate", "4", *_common(workspace, run)]) == 0
    evals = _evals(run)
    assert [e["step"] for e in evals] == [2, 4, 5]  # every 2 steps and at the end
    for e in evals:
        assert set(e["eval"]) == {"loss", "BLEU", "ROUGE_L", "exact_match"} and e["eval"]["loss"] > 0
    best = max(evals, key=lambda e: (e["eval"]["BLEU"], -e["step"]))  # the first of equal values stays best
    recorded = json.loads((run / "best.json").read_text())
    assert (recorded["step"], recorded["metric"], recorded["value"]) == (best["step"], "BLEU", best["eval"]["BLEU"])
    assert [e["best"] for e in evals].count(True) >= 1 and (run / "best/adapter_model.safetensors").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_step"] == best["step"] and not summary["stopped_early"]
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluation_decodes_what_preparation_read_without_reading_the_file_again(workspace, tmp_path):
    """The eval file is read once, by ``prepare_data``: its prompts and references come with the prepared
    data, so a file moved away (or changed) after setup changes nothing that evaluation decodes."""
    eval_file = tmp_path / "dev.jsonl"
    eval_file.write_bytes((workspace / "e2e-dev.jsonl").read_bytes())
    config = TrainConfig(data=str(workspace / "e2e-train.jsonl"), eval_data=str(eval_file), model=str(
        workspace / "tiny-llama"), output=str(tmp_path / "run"), eval_every=2, eval_generate=3, max_steps=2,
        lora_rank=4, batch_size=8, samples=0)
    parts = setup(config)
    eval_file.unlink()
    prompts, refs = parts.validation_prompts(3)
    rows = [json.loads(line) for line in (workspace / "e2e-dev.jsonl").read_text().splitlines()][:3]
    assert prompts == [r["prompt"] for r in rows] and refs == [r["completion"] for r in rows]
    scores = parts.evaluation.generate(parts.model)
    assert set(scores) == {"BLEU", "ROUGE_L", "exact_match"}


def test_validation_loss_is_token_weighted_over_the_eval_file(workspace, tmp_path):
    """The logged loss equals the trained model's summed target-token loss over every eval example,
    divided by their target tokens (not a mean of batch means)."""
    from lorakit.train import CausalLMLoss, collate

    config = TrainConfig(data=str(workspace / "e2e-train.jsonl"), eval_data=str(workspace / "e2e-dev.jsonl"),
                         model=str(workspace / "tiny-llama"), output=str(tmp_path / "run"), eval_every=3,
                         max_steps=3, batch_size=8, lora_rank=4, lora_dropout=0.0, log_every=1, samples=0)
    trainer = build_trainer(config)
    trainer.fit()
    logged = _evals(tmp_path / "run")[-1]["eval"]["loss"]
    assert trainer.evaluation is not None
    samples = trainer.evaluation.samples
    total, count = 0.0, 0
    with torch.no_grad():
        for s in samples:  # one at a time: no padding at all
            summed, n = CausalLMLoss(trainer.model.eval())(**collate([s], trainer.tokenizer.pad_token_id))
            total, count = total + summed.item(), count + int(n)
    assert logged == pytest.approx(total / count, rel=1e-5)


def test_early_stopping_stops_and_a_resume_keeps_it_stopped(workspace, tmp_path):
    run = tmp_path / "run"
    # lr 0: nothing ever improves after the first evaluation, so patience 2 stops at the third
    args = ["train", "--data", str(workspace / "e2e-train.jsonl"), "--eval-fraction", "0.25", "--eval-every", "1",
            "--early-stopping-patience", "2", *_common(workspace, run), "--lr", "1e-12", "--max-steps", "20"]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] and summary["steps"] < 20 and summary["best_step"] == 1
    assert len(_evals(run)) == summary["steps"] == 3
    assert main([*args, "--resume"]) == 0  # finished: nothing more to train
    assert len(_evals(run)) == 3


def _fake_clock(trainer: Trainer, seconds_per_step: float) -> None:
    ticks = iter(range(10**6))
    trainer.clock = lambda: next(ticks) * seconds_per_step


def test_resume_continues_best_and_patience_exactly(workspace, tmp_path):
    base = dict(data=str(workspace / "e2e-train.jsonl"), eval_data=str(workspace / "e2e-dev.jsonl"),
                model=str(workspace / "tiny-llama"), eval_every=1, early_stopping_patience=3, max_steps=6,
                batch_size=8, lora_rank=4, lora_dropout=0.0, lr=1e-2, warmup_steps=1, log_every=1, save_every=1,
                samples=0)
    build_trainer(TrainConfig(**base, output=str(tmp_path / "ref"))).fit()
    stopped = build_trainer(TrainConfig(**base, output=str(tmp_path / "run"), time_budget=2.5))
    _fake_clock(stopped, 1.0)
    assert stopped.fit()["stopped_on_time_budget"]
    build_trainer(TrainConfig(**base, output=str(tmp_path / "run"))).fit(resume=True)
    assert _evals(tmp_path / "run") == _evals(tmp_path / "ref")
    assert json.loads((tmp_path / "run/best.json").read_text()) == json.loads((tmp_path / "ref/best.json").read_text())
    a, b = _tensors(tmp_path / "run/best"), _tensors(tmp_path / "ref/best")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- classification: SST-2's TSV as a user's labelled file ---------------------------------------------


def _write_sst2(root: Path) -> Path:
    rng = random.Random(0)
    good, bad = ["great", "lovely", "fine", "superb"], ["awful", "dull", "poor", "bad"]
    folder = root / "glue" / "SST-2"  # the layout of $LORAKIT_DATA
    folder.mkdir(parents=True)
    for split, n in (("train", 64), ("dev", 16)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            y = rng.random() < 0.5
            lines.append(f"the film was {rng.choice(good if y else bad)} .\t{int(y)}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def test_sst2_tsv_as_a_users_file_matches_the_glue_task(tiny_bert, tmp_path):
    root = _write_sst2(tmp_path / "data")
    common = ["--model", str(tiny_bert), "--batch-size", "16", "--max-steps", "8", "--lr", "3e-3",
              "--warmup-steps", "2", "--eval-every", "4", "--log-every", "1", "--save-every", "100"]
    assert main(["train", "--task", "sst2", "--data", str(root), "--output", str(tmp_path / "glue-run"), *common]) == 0
    assert main(["train", "--data", str(root / "glue/SST-2/train.tsv"), "--eval-data", str(root / "glue/SST-2/dev.tsv"),
                 "--columns", "text=sentence", "--output", str(tmp_path / "user-run"), *common]) == 0
    assert _losses(tmp_path / "glue-run") == _losses(tmp_path / "user-run")
    glue, user = _evals(tmp_path / "glue-run"), _evals(tmp_path / "user-run")
    assert [e["eval"]["accuracy"] for e in glue] == [e["eval"]["accuracy"] for e in user]
    assert [e["eval"]["loss"] for e in glue] == pytest.approx([e["eval"]["loss"] for e in user], rel=1e-6)
    dev = json.loads((tmp_path / "glue-run/dev_scores.json").read_text())
    assert dev["accuracy"] == user[-1]["eval"]["accuracy"]  # the GLUE task path's own dev scorer agrees
    # the label names travel with the adapter (and with best/), so predict answers with them
    assert json.loads((tmp_path / "user-run/adapter/labels.json").read_text()) == ["0", "1"]
    assert (tmp_path / "user-run/best/labels.json").is_file()


def test_user_data_settings_are_refused_with_a_task(tmp_path, capsys):
    assert main(["train", "--task", "e2e", "--eval-fraction", "0.1", "--output", str(tmp_path / "x")]) == 2
    assert "--eval-fraction: applies to your own data file" in capsys.readouterr().err
    assert main(["train", "--data", "x.jsonl", "--early-stopping-patience", "2", "--output", str(tmp_path / "x")]) == 2
    assert "--early-stopping-patience: needs eval_every" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_eval_every_without_validation_data_is_an_error_before_training(workspace, tmp_path, capsys):
    assert main(["train", "--data", str(workspace / "e2e-train.jsonl"), "--eval-every", "2",
                 *_common(workspace, tmp_path / "run")]) == 2
    assert "eval_every needs validation data" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_missing_metrics_extra_is_refused_before_the_first_step(workspace, tmp_path, capsys, monkeypatch):
    """Found on the GPU machine: without pycocoevalcap, --eval-generate used to fail at the first evaluation,
    after training. Each evaluation asks only for what it scores with."""
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # as if not installed: find_spec and import fail
    run = tmp_path / "run"
    assert main(["train", "--data", str(workspace / "e2e-train.jsonl"), "--eval-data", str(workspace / "e2e-dev.jsonl"),
                 "--eval-every", "2", "--eval-generate", "4", *_common(workspace, run)]) == 2
    err = capsys.readouterr().err
    assert "--eval-generate needs the metrics extra (pycocoevalcap not installed): pip install 'lorakit[metrics]'" \
        in err, err
    assert not (run / "log.jsonl").exists() and not (run / "checkpoints").exists()
    # loss-only evaluation needs no metrics: the same run without --eval-generate trains
    assert main(["train", "--data", str(workspace / "e2e-train.jsonl"), "--eval-data", str(workspace / "e2e-dev.jsonl"),
                 "--eval-every", "5", *_common(workspace, tmp_path / "loss-only")]) == 0


def test_labelled_files_and_glue_need_scikit_learn_and_scipy_not_pycocoevalcap(tmp_path, capsys, monkeypatch):
    """The GPU machine had scikit-learn but no pycocoevalcap: a labelled file must train and score there."""
    bert = write_tiny_bert(tmp_path / "bert")
    rows = [f"{'a fine' if i % 2 else 'a dull'} film {i},{'pos' if i % 2 else 'neg'}\n" for i in range(24)]
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(rows))
    (tmp_path / "dev.csv").write_text("text,label\n" + "".join(rows[:8]))
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)
    run = tmp_path / "run"
    assert main(["train", "--model", str(bert), "--data", str(tmp_path / "train.csv"), "--eval-data",
                 str(tmp_path / "dev.csv"), "--eval-every", "2", "--max-steps", "2", "--batch-size", "8",
                 "--samples", "0", "--output", str(run)]) == 0
    assert "accuracy" in _evals(run)[-1]["eval"]
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert main(["train", "--model", str(bert), "--data", str(tmp_path / "train.csv"), "--eval-data",
                 str(tmp_path / "dev.csv"), "--eval-every", "2", "--output", str(tmp_path / "no-sklearn")]) == 2
    assert "labelled file while training needs the metrics extra (sklearn not installed)" in capsys.readouterr().err
    # a GLUE run always ends with its dev scores: refused before the model even loads
    assert main(["train", "--task", "sst2", "--model", str(tmp_path / "no-such-model"),
                 "--output", str(tmp_path / "glue")]) == 2
    assert "sst2's dev scores needs the metrics extra (sklearn not installed)" in capsys.readouterr().err
    assert not (tmp_path / "glue").exists() and not (tmp_path / "no-sklearn" / "log.jsonl").exists()


def test_an_existing_run_is_refused_before_anything_loads(tmp_path, capsys):
    """The model named does not exist: the refusal must come first, not after loading and tokenising."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "log.jsonl").write_text("")
    assert main(["train", "--data", str(tmp_path / "missing.jsonl"), "--model", str(tmp_path / "no-model"),
                 "--output", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (log.jsonl, checkpoints; no complete checkpoint yet)" in err, err
