"""The training engine: batching, the target-only loss, accumulation, NaN handling, resume, DDP, CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make
from safetensors.torch import load_file
from train_fixtures import write_e2e, write_tiny_llama

from lorakit.recipes import build_trainer
from lorakit.train import CausalLMLoss, Sample, TrainConfig, TrainingDiverged, collate
from lorakit.train.batching import padding_fraction, plan_batches, shard

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    write_e2e(root / "data")
    write_tiny_llama(root / "tiny-llama")
    return root


def _config(workspace: Path, output: Path, **kw) -> TrainConfig:
    base = dict(task="e2e", model=str(workspace / "tiny-llama"), data=str(workspace / "data"), output=str(output),
                lora_rank=4, lora_alpha=8, lora_dropout=0.0, batch_size=8, max_steps=4, lr=1e-2, warmup_steps=1,
                log_every=1, save_every=100, samples=0)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


# --- batching ---------------------------------------------------------------------------------------------
def test_plan_covers_every_example_once_and_is_deterministic():
    lengths = [(i * 37) % 50 + 5 for i in range(203)]
    plan = plan_batches(lengths, 8, seed=1, epoch=0)
    flat = [i for b in plan for i in b]
    assert len(plan) == 203 // 8 and all(len(b) == 8 for b in plan)
    assert len(set(flat)) == len(flat) == 200
    assert plan == plan_batches(lengths, 8, seed=1, epoch=0)
    assert plan != plan_batches(lengths, 8, seed=1, epoch=1)


def test_length_grouping_cuts_padding():
    lengths = [(i * 7919) % 90 + 10 for i in range(2000)]
    samples = [Sample([1] * n, [1] * n) for n in lengths]
    grouped = padding_fraction(samples, plan_batches(lengths, 8, 0, 0, group_by_length=True))
    random_order = padding_fraction(samples, plan_batches(lengths, 8, 0, 0, group_by_length=False))
    assert random_order > 0.2 and grouped < 0.05


def test_shards_partition_the_global_batch():
    batch = list(range(10))
    parts = [shard(batch, r, 3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == batch


# --- the loss ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("split", [True, False])
def test_target_only_loss_equals_transformers_loss(arch, split):
    model = make(arch)
    samples = [Sample([5, 6, 7, 8, 9], [-100, -100, 7, 8, 9]), Sample([5, 9, 3], [-100, 9, 3])]
    batch = collate(samples, pad_id=0)
    loss_sum, n = CausalLMLoss(model, targets_only_head=split)(**batch)
    assert n.item() == 5  # 7, 8, 9 and 9, 3: a label at position 0 would never be predicted
    reference = model(**batch).loss
    torch.testing.assert_close(loss_sum / n, reference, rtol=0, atol=1e-5)
    assert CausalLMLoss(model).split is True


# --- the loop ---------------------------------------------------------------------------------------------
def test_gradient_accumulation_is_exact(workspace, tmp_path):
    full = build_trainer(_config(workspace, tmp_path / "a"))
    full.fit()
    accumulated = build_trainer(_config(workspace, tmp_path / "b", micro_batch_size=3))  # 3 + 3 + 2 rows
    accumulated.fit()
    a = load_file(tmp_path / "a/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "b/adapter/adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), abs=1e-6)
    assert all(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # B left zero-init: the steps did train


def _first_step_gradients(trainer) -> dict[str, torch.Tensor]:
    """The LoRA gradients of the trainer's first step, as backward left them (before clipping)."""
    grads = {}
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda q, name=name: grads.__setitem__(name, q.grad.clone()))
    trainer.step(0)
    return grads


def test_uniform_token_weighting_divides_every_batch_by_one_run_wide_number(workspace, tmp_path):
    by_batch = build_trainer(_config(workspace, tmp_path / "a"))
    uniform = build_trainer(_config(workspace, tmp_path / "b", token_weighting="uniform"))
    batch = by_batch.global_batch(0)
    assert batch == uniform.global_batch(0)
    tokens = sum(by_batch.samples[i].target_tokens for i in batch)
    everywhere = [s.target_tokens for s in by_batch.samples]
    assert uniform.mean_batch_tokens == pytest.approx(8 * sum(everywhere) / len(everywhere))
    assert tokens != pytest.approx(uniform.mean_batch_tokens)  # else the check below could not fail
    a, b = _first_step_gradients(by_batch), _first_step_gradients(uniform)
    assert a.keys() == b.keys() and any(g.abs().sum() > 0 for g in a.values())  # lora_B's, as A starts at B=0
    for name in a:  # the same sum, divided by the batch's own target tokens or by the run's mean per batch
        torch.testing.assert_close(b[name] * uniform.mean_batch_tokens, a[name] * tokens, rtol=1e-4, atol=1e-6)


def test_run_folder_holds_adapter_config_log_and_plot(workspace, tmp_path):
    build_trainer(_config(workspace, tmp_path / "run", save_every=2)).fit()
    run = tmp_path / "run"
    assert (run / "adapter/adapter_config.json").is_file() and (run / "run_config.json").is_file()
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-0000002", "step-0000004"]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["peak_mem_mb"] > 50 for r in records)  # the process's peak RSS: torch alone is more
    summary = json.loads((run / "summary.json").read_text())
    adapter_bytes = sum(f.stat().st_size for f in (run / "adapter").iterdir())
    assert summary["steps"] == 4 and summary["saved_bytes"] == adapter_bytes
    assert 0 < summary["trainable_params"] < summary["total_params"]
    with pytest.raises(FileExistsError, match="--resume"):
        build_trainer(_config(workspace, tmp_path / "run")).fit()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(workspace, tmp_path):
    trainer = build_trainer(_config(workspace, tmp_path / "run", save_every=1, max_steps=6))
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] >= 3 else output
    trainer.model.model.norm.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3.*Last good checkpoint: .*step-0000002"):
        trainer.fit()
    good = load_file(tmp_path / "run/checkpoints/step-0000002/trainable.safetensors")
    assert all(torch.isfinite(t).all() for t in good.values())
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step-0000002"


def test_full_finetune_same_command(workspace, tmp_path):
    trainer = build_trainer(_config(workspace, tmp_path / "full", full_finetune=True, lr=1e-3, max_steps=2))
    assert all(p.requires_grad for p in trainer.model.parameters())
    trainer.fit()
    assert (tmp_path / "full/model/model.safetensors").is_file()
    assert not (tmp_path / "full/adapter").exists() and not (tmp_path / "full/.model.partial").exists()
    summary = json.loads((tmp_path / "full/summary.json").read_text())
    assert summary["trainable_params"] == summary["total_params"]


def test_compare_runs_script(workspace, tmp_path):
    """benchmarks/compare_runs.py on a LoRA and a full run: a row each, probes in fresh processes, a PNG."""
    runs = {"lora": {}, "full": {"full_finetune": True, "lr": 1e-3}}
    for name, kw in runs.items():
        build_trainer(_config(workspace, tmp_path / name, max_steps=6, **kw)).fit()
        (tmp_path / name / "scores.json").write_text(json.dumps({"BLEU": 0.5 if name == "lora" else 0.4}))
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "compare_runs.py"), str(tmp_path / "lora"),
           str(tmp_path / "full"), "--scores", "scores.json", "--probe-steps", "5", "--output", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["scores"]["BLEU"] for r in rows] == [0.5, 0.4]
    lora, full = rows
    assert lora["trainable_params"] < full["trainable_params"] and lora["saved_bytes"] < full["saved_bytes"]
    assert lora["steps"] == full["steps"] == 6 and all(r["peak_mem_mb"] > 0 and r["s_per_step"] > 0 for r in rows)
    assert "lora / full: trainable params" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_config_file_with_overrides_and_errors(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('task = "e2e"\nlora_rank = 4\nlr = 0.001\ntarget_modules = ["q_proj"]\n')
    config = TrainConfig.from_file(path, lora_rank=16)
    assert (config.lora_rank, config.lr, config.target_modules) == (16, 0.001, ["q_proj"])
    # a run_config.json written before the LoRA settings were renamed still reads (and resumes)
    path.write_text('task = "e2e"\nrank = 4\nalpha = 8.0\ndropout = 0.0\ntargets = ["q_proj"]\n')
    config = TrainConfig.from_file(path)
    assert (config.lora_rank, config.lora_alpha, config.lora_dropout, config.target_modules) == (4, 8.0, 0.0,
                                                                                               ["q_proj"])
    path.write_text("rank = 4\nlora_rank = 8\n")
    with pytest.raises(ValueError, match=r"run.toml: lora_rank: given twice"):
        TrainConfig.from_file(path)
    path.write_text("rnk = 4\n")
    with pytest.raises(ValueError, match=r"run.toml: unknown setting 'rnk'"):
        TrainConfig.from_file(path)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


# --- real processes ---------------------------------------------------------------------------------------
def _cli(workspace: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--task", "e2e", "--model", str(workspace / "tiny-llama"), "--data", str(workspace / "data"),
            "--output", str(output), "--lora-rank", "4", "--batch-size", "4", "--lr", "0.01", "--log-every", "1",
            "--samples", "0", *extra]


def test_killed_run_resumes_on_the_same_curve(workspace, tmp_path):
    # killed as soon as the first checkpoint is named: the remaining 15 steps take far longer than the poll
    args = _cli(workspace, tmp_path / "x", "--max-steps", "20", "--save-every", "5", "--lora-dropout", "0.1")
    command = [str(BIN / "python"), "-m", "lorakit.cli", *args]
    reference = list(args)
    reference[reference.index(str(tmp_path / "x"))] = str(tmp_path / "ref")
    subprocess.run([str(BIN / "python"), "-m", "lorakit.cli", *reference], check=True, capture_output=True)

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    latest = tmp_path / "x/checkpoints/latest"
    deadline = time.monotonic() + 120
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest.read_text().strip()
    assert killed_at != "step-0000020", "the run finished before it could be killed"
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, check=True)
    assert f"resumed from {tmp_path / 'x/checkpoints' / killed_at}" in resumed.stdout
    assert _losses(tmp_path / "x") == _losses(tmp_path / "ref")  # bit-identical: data order, optimizer, RNG
    a = load_file(tmp_path / "x/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "ref/adapter/adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_step_with_everything_saved(workspace, tmp_path, sig):
    """Ctrl-C or a scheduler's SIGTERM: the run stops after its current step as a time budget stops it
    (checkpoint, adapter, summary), exits 0 and resumes from there."""
    out = tmp_path / "x"
    command = [str(BIN / "python"), "-m", "lorakit.cli", *_cli(workspace, out, "--max-steps", "200",
                                                                "--save-every", "100")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (out / "log.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the log is written at the first logged step: training is under way
    proc.send_signal(sig)
    printed, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, printed[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert 0 < steps < 200 and summary["stopped_by"] == "signal" and not summary["stopped_on_time_budget"]
    assert f"{sig.name} received: stopped after step {steps} of 200" in printed, printed[-2000:]
    assert f"stopped by a signal after {steps} of 200 steps" in printed, printed[-2000:]
    assert (out / "checkpoints/latest").read_text().strip() == f"step-{steps:07d}"
    assert (out / "adapter/adapter_model.safetensors").is_file()
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["stopped"] == "signal"
    resumed = subprocess.run([*command, "--resume", "--max-steps", str(steps + 2)], capture_output=True, text=True,
                             check=True)
    assert f"resumed from {out / 'checkpoints' / f'step-{steps:07d}'}" in resumed.stdout
    assert json.loads((out / "summary.json").read_text())["stopped_by"] is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_one(workspace, tmp_path):
    steps = ["--max-steps", "4", "--batch-size", "8", "--lora-dropout", "0"]  # dropout masks differ per process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(BIN / "python"), "-m", "lorakit.cli", *_cli(workspace, tmp_path / "one", *steps)],
                   check=True, capture_output=True, env=env)
    ddp = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node=2", "--master_addr=127.0.0.1",
                          f"--master_port={_free_port()}", "-m", "lorakit.cli",
                          *_cli(workspace, tmp_path / "two", *steps)], capture_output=True, text=True, env=env)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-2000:]
    assert "on 2 process(es)" in ddp.stdout
    a = load_file(tmp_path / "one/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "two/adapter/adapter_model.safetensors")
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), abs=1e-5)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # unsynced gradients differ by ~1e-2 here


def test_label_smoothing_matches_its_definition():
    model = make("llama")
    batch = collate([Sample([5, 6, 7, 8], [-100, 6, 7, 8])], pad_id=0)
    smoothed, _ = CausalLMLoss(model, label_smoothing=0.1)(**batch)
    logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
    logp = torch.log_softmax(logits, dim=-1)
    targets = batch["labels"][0, 1:]
    expected = sum(0.9 * -logp[i, t] + 0.1 * -logp[i].mean() for i, t in enumerate(targets))
    torch.testing.assert_close(smoothed, expected, rtol=0, atol=1e-4)


def test_examples_without_target_tokens_are_skipped(capsys):
    from lorakit.models import gpt2_tokenizer
    from lorakit.train import tokenize_pairs

    samples = tokenize_pairs(gpt2_tokenizer(), [("short prompt\n", "text"), ("a much longer prompt " * 5, "x")],
                             max_length=8)
    assert len(samples) == 1 and samples[0].target_tokens == 2  # "text" + EOS
    assert "skipped 1 of 2 examples" in capsys.readouterr().out


def test_non_finite_gradients_stop_before_the_step(workspace, tmp_path):
    trainer = build_trainer(_config(workspace, tmp_path / "run", save_every=1, max_steps=4))
    first_b = next(p for n, p in trainer.model.named_parameters() if "lora_B" in n)
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] >= 2 else grad
    first_b.register_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"gradient norm became (nan|inf) at step 2"):
        trainer.fit()
    assert torch.isfinite(first_b).all()  # the bad step was not taken
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step-0000001"


def test_resume_refuses_changed_settings_and_fresh_start_refuses_old_log(workspace, tmp_path):
    build_trainer(_config(workspace, tmp_path / "run", max_steps=2, save_every=1)).fit()
    with pytest.raises(ValueError, match=r"--resume with other settings.*batch_size was 8, now 4"):
        build_trainer(_config(workspace, tmp_path / "run", max_steps=3, batch_size=4)).fit(resume=True)
    build_trainer(_config(workspace, tmp_path / "run", max_steps=3)).fit(resume=True)  # a longer run is fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other/log.jsonl").write_text('{"step": 1, "loss": 1.0, "lr": 0.1}\n')
    with pytest.raises(FileExistsError, match=r"log.jsonl.*--resume"):
        build_trainer(_config(workspace, tmp_path / "other")).fit()
    with pytest.raises(ValueError, match="keep_checkpoints"):
        _config(workspace, tmp_path / "x", keep_checkpoints=0)


def test_log_tolerates_a_line_cut_by_a_kill(tmp_path):
    from lorakit.train.logs import MetricsLog

    log = MetricsLog(tmp_path / "log.jsonl")
    log.append({"step": 1, "loss": 2.0})
    with log.path.open("a") as f:
        f.write('{"step": 2, "lo')
    assert log.read() == [{"step": 1, "loss": 2.0}]
    log.truncate_after(1)
    assert log.path.read_text() == '{"step": 1, "loss": 2.0}\n'
