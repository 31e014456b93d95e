"""Every state a killed or finished run can be left in resumes (or restarts) with the one command its error
message names; the time budget stops a run cleanly and resumes on the same curve."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import write_e2e, write_tiny_llama

from lorakit.cli import main
from lorakit.recipes import build_trainer
from lorakit.train import TrainConfig, Trainer

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    write_e2e(root / "data", rows=40)
    write_tiny_llama(root / "tiny-llama")
    return root


def _args(workspace: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--task", "e2e", "--model", str(workspace / "tiny-llama"), "--data", str(workspace / "data"),
            "--output", str(output), "--lora-rank", "4", "--batch-size", "8", "--lr", "0.01", "--warmup-steps", "1",
            "--log-every", "1", "--save-every", "2", "--max-steps", "4", "--samples", "0", "--lora-dropout", "0",
            *extra]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def _result(run: Path) -> dict[str, torch.Tensor]:
    folder = run / "adapter" if (run / "adapter").exists() else run / "model"
    return load_file(folder / ("adapter_model.safetensors" if folder.name == "adapter" else "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished(workspace, tmp_path_factory) -> dict[str, Path]:
    """A finished LoRA run (4 steps, checkpoints at 2 and 4) and a finished full fine-tuning run (2 steps)."""
    root = tmp_path_factory.mktemp("finished")
    assert main(_args(workspace, root / "lora")) == 0
    assert main(_args(workspace, root / "full", "--full-finetune", "--max-steps", "2", "--lr", "0.001")) == 0
    return {"lora": root / "lora", "full": root / "full"}


def _copy(run: Path, to: Path) -> Path:
    """The run as if it had been made in ``to``."""
    shutil.copytree(run, to)
    settings = json.loads((to / "run_config.json").read_text())
    (to / "run_config.json").write_text(json.dumps({**settings, "output": str(to)}))
    return to


def _keep_log_until(run: Path, step: int) -> None:
    lines = (run / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= step))


def _named_command(err: str) -> list[str]:
    """The ``lorakit train ...`` command an error message tells the user to run, as argv for ``main``."""
    start = err.index("lorakit train --config")
    argv = shlex.split(err[start:].split(";")[0].strip())
    return argv[1:]


# --- killed states: a plain rerun names one command, and that command finishes the run ----------------------
def _killed_before_first_checkpoint(run: Path) -> None:
    for name in ("checkpoints", "adapter"):
        shutil.rmtree(run / name)
    for name in ("summary.json", "loss.png"):
        (run / name).unlink()
    _keep_log_until(run, 1)


def _killed_while_staging_first_checkpoint(run: Path) -> None:
    _killed_before_first_checkpoint(run)
    staging = run / "checkpoints/.tmp-step-0000002"
    staging.mkdir(parents=True)
    (staging / "trainable.safetensors").write_bytes(b"\x00" * 10)  # cut short


def _killed_after_first_publish_before_latest(run: Path) -> None:
    shutil.rmtree(run / "checkpoints/step-0000004")
    (run / "checkpoints/latest").unlink()
    shutil.rmtree(run / "adapter")
    (run / "summary.json").unlink()
    _keep_log_until(run, 3)


def _killed_after_later_publish_before_latest(run: Path) -> None:
    (run / "checkpoints/latest").write_text("step-0000002\n")
    shutil.rmtree(run / "adapter")
    (run / "summary.json").unlink()


def _killed_during_final_save(run: Path) -> None:
    shutil.rmtree(run / "adapter")
    (run / "summary.json").unlink()
    (run / ".adapter.k3j2h1").mkdir()  # save_adapter's staging folder
    (run / ".adapter.k3j2h1/adapter_model.safetensors").write_bytes(b"\x00" * 10)


@pytest.mark.parametrize(("state", "resumed_from"), [
    (_killed_before_first_checkpoint, None),
    (_killed_while_staging_first_checkpoint, None),
    (_killed_after_first_publish_before_latest, "step-0000002"),
    (_killed_after_later_publish_before_latest, "step-0000002"),
    (_killed_during_final_save, "step-0000004"),
])
def test_killed_run_continues_with_the_named_command(workspace, finished, tmp_path, capsys, state, resumed_from):
    run = _copy(finished["lora"], tmp_path / "run")
    state(run)
    assert main(_args(workspace, run)) == 2  # a plain rerun refuses to overwrite, and says what to run
    err = capsys.readouterr().err.splitlines()[-1]  # one line after any progress bars
    state_text = f"last checkpoint at step {int(resumed_from[5:])}" if resumed_from else "no complete checkpoint yet"
    assert err.startswith("lorakit train: error: ") and state_text in err, err
    assert f"lorakit train --config {run / 'run_config.json'} --resume" in err, err
    assert main(_named_command(err)) == 0
    out = capsys.readouterr().out
    if resumed_from is None:
        assert "no complete checkpoint" in out and "starting from step 0" in out, out
    else:
        assert f"resumed from {run / 'checkpoints' / resumed_from}" in out, out
    assert _same(_result(run), _result(finished["lora"]))
    assert _losses(run) == _losses(finished["lora"])
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    leftovers = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.startswith(".")]
    assert leftovers == []
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000002", "step-0000004"]


def test_named_command_works_as_a_real_process(workspace, finished, tmp_path, capsys):
    """The issue's stuck state: SIGKILL while the first checkpoint was being written."""
    run = _copy(finished["lora"], tmp_path / "run")
    _killed_while_staging_first_checkpoint(run)
    assert main(_args(workspace, run)) == 2
    command = _named_command(capsys.readouterr().err)
    proc = subprocess.run([str(BIN / "lorakit"), *command], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "starting from step 0" in proc.stdout
    assert _losses(run) == pytest.approx(_losses(finished["lora"]), abs=1e-5)


def test_resume_without_any_run_starts_from_step_0(workspace, tmp_path, capsys):
    assert main(_args(workspace, tmp_path / "new", "--max-steps", "1", "--resume")) == 0
    assert "starting from step 0" in capsys.readouterr().out
    assert (tmp_path / "new/adapter/adapter_model.safetensors").is_file()


# --- finished runs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "full"])
def test_resuming_a_finished_run_says_so_and_changes_nothing(finished, tmp_path, capsys, kind):
    run = _copy(finished[kind], tmp_path / "run")
    summary = (run / "summary.json").read_text()
    assert main(["train", "--config", str(run / "run_config.json"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"{run} already finished" in out and "--max-steps" in out, out  # names how to train longer
    assert (run / "summary.json").read_text() == summary
    assert _same(_result(run), _result(finished[kind]))


def test_full_run_killed_after_its_model_was_saved_resumes(finished, tmp_path, capsys):
    """``--resume`` used to fail with ``[Errno 39] Directory not empty: '.model.partial' -> 'model'``."""
    run = _copy(finished["full"], tmp_path / "run")
    (run / "summary.json").unlink()  # killed between the model's rename and the summary
    (run / ".model.partial").mkdir()  # and a stale staging folder from an earlier kill
    assert main(["train", "--config", str(run / "run_config.json"), "--resume"]) == 0, capsys.readouterr().err
    assert _same(_result(run), _result(finished["full"]))
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert not (run / ".model.partial").exists() and not (run / ".model.old").exists()


def test_resume_past_a_shorter_max_steps_is_refused_with_the_fix(finished, tmp_path, capsys):
    run = _copy(finished["lora"], tmp_path / "run")
    assert main(["train", "--config", str(run / "run_config.json"), "--resume", "--max-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "step 4" in err and "--max-steps 4" in err, err


# --- damaged runs (found by a hostile-input audit) ------------------------------------------------------
@pytest.mark.parametrize("damage", ["state.pt", "trainable.safetensors", "rng-0.pt"])
def test_a_finished_run_with_only_incomplete_checkpoints_is_refused_not_restarted(finished, tmp_path, capsys, damage):
    """``--resume`` used to start such a run again from step 0, overwriting its log and adapter, and exit 0."""
    run = _copy(finished["lora"], tmp_path / "run")
    for checkpoint in (run / "checkpoints").glob("step-*"):
        (checkpoint / damage).unlink()
    log, result = (run / "log.jsonl").read_text(), _result(run)
    assert main(["train", "--config", str(run / "run_config.json"), "--resume", "--max-steps", "6"]) == 2
    err = capsys.readouterr().err
    assert "holds only incomplete checkpoints (step-0000002, step-0000004" in err, err
    assert "would overwrite adapter, summary.json" in err
    assert (run / "log.jsonl").read_text() == log and _same(_result(run), result)


@pytest.mark.parametrize(("name", "content"), [("trainable.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00garbage"),
                                               ("state.pt", b"not a checkpoint")])
def test_a_garbled_checkpoint_file_is_one_line_naming_it(finished, tmp_path, capsys, name, content):
    run = _copy(finished["lora"], tmp_path / "run")
    (run / "checkpoints" / "step-0000004" / name).write_bytes(content)
    log = (run / "log.jsonl").read_text()
    assert main(["train", "--config", str(run / "run_config.json"), "--resume", "--max-steps", "6"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not the progress bar
    assert len(errors) == 1 and f"step-0000004/{name}: cannot read this checkpoint file" in errors[0], errors
    assert (run / "log.jsonl").read_text() == log


def test_a_run_config_that_is_not_a_table_is_named(workspace, finished, tmp_path, capsys):
    run = _copy(finished["lora"], tmp_path / "run")
    (run / "run_config.json").write_text("[1, 2]")
    assert main(_args(workspace, run, "--resume", "--max-steps", "6")) == 2
    assert f"{run / 'run_config.json'}: expected a table of settings, got list" in capsys.readouterr().err


# --- time budget ----------------------------------------------------------------------------------------
def _config(workspace: Path, output: Path, **kw) -> TrainConfig:
    base = dict(task="e2e", model=str(workspace / "tiny-llama"), data=str(workspace / "data"), output=str(output),
                lora_rank=4, lora_dropout=0.0, batch_size=8, max_steps=6, lr=1e-2, warmup_steps=1, log_every=1,
                save_every=4, samples=0)
    return TrainConfig(**{**base, **kw})


def _fake_clock(trainer: Trainer, seconds_per_step: float) -> None:
    """Each training step takes ``seconds_per_step`` on the trainer's clock (no sleeping)."""
    now = [0.0]
    step = trainer.step

    def timed(i: int):
        now[0] += seconds_per_step
        return step(i)
    trainer.clock = lambda: now[0]
    trainer.step = timed  # type: ignore[method-assign]


def test_time_budget_stops_after_a_whole_step_saves_and_resumes_on_the_same_curve(workspace, tmp_path):
    build_trainer(_config(workspace, tmp_path / "ref")).fit()
    trainer = build_trainer(_config(workspace, tmp_path / "run", time_budget=25))
    _fake_clock(trainer, 10.0)
    summary = trainer.fit()
    run = tmp_path / "run"
    assert summary["steps"] == 3 and summary["planned_steps"] == 6 and summary["stopped_on_time_budget"] is True
    assert json.loads((run / "summary.json").read_text())["stopped_on_time_budget"] is True
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and records[-1]["stopped"] == "time_budget"
    assert (run / "checkpoints/latest").read_text().strip() == "step-0000003"
    assert (run / "adapter/adapter_model.safetensors").is_file()
    ref = [json.loads(line) for line in (tmp_path / "ref/log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == [r["lr"] for r in ref[:3]]  # schedule still planned for 6 steps

    resumed = build_trainer(_config(workspace, run, time_budget=None))  # a resumed run may change its budget
    assert resumed.fit(resume=True)["stopped_on_time_budget"] is False
    assert _losses(run) == _losses(tmp_path / "ref")
    assert _same(_result(run), _result(tmp_path / "ref"))


def test_cli_time_budget_reports_the_stop(workspace, tmp_path, capsys):
    assert main(_args(workspace, tmp_path / "run", "--time-budget", "0.000001")) == 0  # spent by any one step
    out = capsys.readouterr().out
    assert "stopped on the time budget after 1 of 4 steps" in out, out
    assert f"lorakit train --config {tmp_path / 'run/run_config.json'} --resume" in out
    assert json.loads((tmp_path / "run/run_config.json").read_text())["time_budget"] == 1e-6
    assert main(["train", "--config", str(tmp_path / "run/run_config.json"), "--resume", "--time-budget", "off"]) == 0
    assert json.loads((tmp_path / "run/summary.json").read_text())["steps"] == 4
