"""The real packaged model, end to end: the README's example as written, and the main job (shortened)."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, shared_data_dir

from lorakit.cli import main


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
def test_main_job_trains_saves_reloads_and_merges(tmp_path, capsys):
    from lorakit.demo import run_demo

    result = run_demo(steps=6, batch_size=4, output=tmp_path / "demo", data=str(shared_data_dir()), samples=1)
    assert (tmp_path / "demo/adapter/adapter_config.json").is_file()
    assert result["reload_diff"] < 1e-4 and result["merge_diff"] < 1e-3
    assert result["unmerge_diff"] < 1e-6
    assert result["loss_last"] < result["loss_first"]
    out = capsys.readouterr().out
    assert "generated:" in out and "reference:" in out


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
