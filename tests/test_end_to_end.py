"""The real packaged model, end to end: the README's example as written, and the main job (shortened)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO, shared_data_dir

from lorakit.cli import main
from lorakit.quant import choose_mode


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert (tmp_path / "runs/readme/e2e/adapter_model.safetensors").is_file()
    report = str(namespace["lorakit"].parameter_report(namespace["model"]))
    documented = re.search(r"# (trainable params: [\d,]+ / [\d,]+ \([\d.]+%\))", blocks[0])
    assert documented and report.startswith(documented.group(1)), report


@pytest.mark.skipif(shared_data_dir() is None, reason="E2E data not found (set LORAKIT_DATA)")
def test_main_job_config_trains_smollm2_on_e2e(tmp_path, capsys):
    """The README's main job, shortened: same config file, real model, real E2E data."""
    out = tmp_path / "run"
    code = main(["train", "--config", str(REPO / "configs/e2e-smollm2-quick.toml"), "--data", str(shared_data_dir()),
                 "--output", str(out), "--max-steps", "12", "--batch-size", "4", "--warmup-steps", "2",
                 "--log-every", "1", "--samples", "1", "--time-budget", "off"])
    assert code == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 12 and sum(losses[-4:]) < sum(losses[:4])
    evals = [r for r in records if "eval" in r]  # the config's dev evaluation, at the end of this short run
    assert [r["step"] for r in evals] == [12] and 0 < evals[0]["eval"]["loss"] < 20 and (out / "best").is_dir()
    assert (out / "adapter/adapter_model.safetensors").is_file() and (out / "loss.png").is_file()
    printed = capsys.readouterr().out
    assert "generated:" in printed and "reference:" in printed
    # the generations come from a fresh base + the saved adapter with the trained model's logits: merged on
    # fp32, unmerged on the bf16 base that the config's quantize = "auto" picks on CPUs with fast bf16
    mode = json.loads((out / "run_config.json").read_text())["quantize"]
    assert mode == "auto", mode
    if choose_mode() == "none":
        diffs = re.search(r"max \|logit diff\| vs the trained model (\S+); merged into the weights: (\S+)", printed)
        assert diffs and float(diffs.group(1)) < 1e-4 and float(diffs.group(2)) < 1e-3, printed
    else:
        diffs = re.search(r"\(bf16\): max \|logit diff\| vs the trained model (\S+); not merged", printed)
        assert diffs and float(diffs.group(1)) == 0.0, printed


def test_cli_info_describes_adapter_and_reports_errors(tmp_path, capsys):
    from conftest import make

    import lorakit

    model = make("roberta")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, modules_to_save=["classifier"]))
    lorakit.save_adapter(model, tmp_path / "a")
    assert main(["info", str(tmp_path / "a")]) == 0
    assert "r=4" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
