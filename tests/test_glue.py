"""GLUE: loaders for all eight tasks on files in the official format, metrics, training and prediction with
a task head saved in the adapter, and several task adapters in one model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import shared_data_dir
from train_fixtures import write_tiny_bert

from lorakit.cli import main as lorakit_main
from lorakit.data import DataFormatError, load_glue
from lorakit.data.glue import glue_spec
from lorakit.metrics import glue_metric, glue_scores
from lorakit.models import load_tokenizer
from lorakit.nlu import evaluate_glue, load_classifier, predict_logits
from lorakit.nlu.multitask import MultiTaskClassifier
from lorakit.nlu.protocol import lr_tag

# One header (or none, for CoLA) and rows per task, as the official GLUE TSVs have them.
ROWS = {
    "CoLA/train.tsv": ["gj04\t1\t\tThe sailors rode the breeze clear of the rocks.", "gj04\t0\t*\tThe more we."],
    "SST-2/train.tsv": ["sentence\tlabel", "a charming and \"affecting journey \t1", "bleak and desperate \t0"],
    "MRPC/train.tsv": ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t1\t2\tHe said so.\t\"He said so."],
    "STS-B/train.tsv": ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane takes off.\t"
                        "A plane flies.\t4.200"],
    "QQP/train.tsv": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "7\t15\t16\tHow?\tWhy?\t0"],
    "MNLI/train.tsv": ["index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                       "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
                       "0\t1\t1n\tgov\t(a)\t(b)\t(A)\t(B)\tCats sleep.\tCats rest.\tneutral\tneutral"],
    "MNLI/dev_mismatched.tsv": ["index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                                "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\t"
                                "label4\tlabel5\tgold_label",
                                "0\t1\t1c\tgov\t(a)\t(b)\t(A)\t(B)\tIt is.\tIt is not.\tcontradiction\tc\tc\tc\tc\t"
                                "contradiction"],
    "QNLI/train.tsv": ["index\tquestion\tsentence\tlabel", "0\tWho?\tHe did.\tentailment"],
    "RTE/train.tsv": ["index\tsentence1\tsentence2\tlabel", "0\tA man sleeps.\tA man is awake.\tnot_entailment"],
    "RTE/test.tsv": ["index\tsentence1\tsentence2", "0\tA man sleeps.\tA man rests."],
    "CoLA/test.tsv": ["index\tsentence", "0\tThe more we.", "1\tWe laughed."],
}
EXPECTED = {  # task, split, (text_a, text_b, label) of the first example
    ("cola", "train"): ("The sailors rode the breeze clear of the rocks.", None, 1),
    ("sst2", "train"): ("a charming and \"affecting journey ", None, 1),
    ("mrpc", "train"): ("He said so.", "\"He said so.", 1),
    ("stsb", "train"): ("A plane takes off.", "A plane flies.", 4.2),
    ("qqp", "train"): ("How?", "Why?", 0),
    ("mnli", "train"): ("Cats sleep.", "Cats rest.", 1),
    ("mnli", "dev_mismatched"): ("It is.", "It is not.", 2),
    ("qnli", "train"): ("Who?", "He did.", 0),
    ("rte", "train"): ("A man sleeps.", "A man is awake.", 1),
    ("rte", "test"): ("A man sleeps.", "A man rests.", None),
    ("cola", "test"): ("The more we.", None, None),
}


def write_glue(root: Path, files: dict[str, list[str]]) -> Path:
    for name, lines in files.items():
        path = root / "glue" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.mark.parametrize(("task", "split"), sorted(EXPECTED))
def test_every_task_reads_its_official_format(tmp_path: Path, task: str, split: str) -> None:
    root = write_glue(tmp_path, ROWS)
    first = load_glue(task, split, root)[0]
    assert (first.text_a, first.text_b, first.label) == EXPECTED[(task, split)]


@pytest.mark.parametrize(("file", "line", "message"), [
    ("RTE/train.tsv", "index\tsentence1\tlabel", "header has no column 'sentence2'"),
    ("RTE/train.tsv", "0\tA man sleeps.\tnot_entailment", "line 2: 3 tab-separated fields, expected 4"),
    ("RTE/train.tsv", "0\tA.\tB.\tmaybe", "line 2: unknown label 'maybe' for rte"),
    ("STS-B/train.tsv", "0\tg\tf\ty\to\ts\ts\tA.\tB.\tfive", "line 2: score 'five' is not a number"),
    ("CoLA/train.tsv", "gj04\t1", "line 1: 2 tab-separated fields, expected 4"),
])
def test_bad_rows_name_file_and_line(tmp_path: Path, file: str, line: str, message: str) -> None:
    rows = dict(ROWS)
    header = [] if file.startswith("CoLA") else ROWS[file][:1]
    rows[file] = [line] if "header" in message else [*header, line]
    root = write_glue(tmp_path, rows)
    task = {"RTE": "rte", "STS-B": "stsb", "CoLA": "cola"}[file.split("/")[0]]
    with pytest.raises(DataFormatError) as err:
        load_glue(task, "train", root)
    assert str(tmp_path / "glue" / file) in str(err.value) and message in str(err.value)


def test_real_glue_files_load() -> None:
    root = shared_data_dir()
    if root is None or not (root / "glue").is_dir():
        pytest.skip("shared GLUE data not found")
    counts = {("cola", "train"): 8551, ("cola", "dev"): 1043, ("sst2", "train"): 67349, ("sst2", "dev"): 872,
              ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("stsb", "train"): 5749, ("stsb", "dev"): 1500,
              ("rte", "train"): 2490, ("rte", "dev"): 277, ("qnli", "dev"): 5463}
    for (task, split), n in counts.items():
        assert len(load_glue(task, split, root)) == n, (task, split)


def test_metrics_by_hand() -> None:
    gold, pred = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
    tp, tn, fp, fn = 2, 2, 1, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert glue_metric("matthews", pred, gold) == pytest.approx(100 * mcc)
    assert glue_metric("accuracy", pred, gold) == pytest.approx(100 * 4 / 6)
    assert glue_metric("f1", pred, gold) == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    x, y = [1.0, 2.0, 4.0], [2.0, 4.0, 7.0]  # monotone (Spearman 1) but not linear
    mx, my = sum(x) / 3, sum(y) / 3
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    pearson = cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert pearson < 0.999
    assert glue_scores("stsb", x, y) == pytest.approx({"pearson": 100 * pearson, "spearman": 100.0}, rel=1e-9)
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        glue_metric("accuracy", [0, 1, 1], [0, 1])


# ---------------------------------------------------------------------------------------- training


def write_sentiment(root: Path, train: int = 96, dev: int = 24, seed: int = 0) -> Path:
    """SST-2/RTE/STS-B files whose label follows from a word, so a short run can learn them."""
    rng = random.Random(seed)
    good, bad = ["great", "lovely", "fine", "superb"], ["awful", "dull", "poor", "bad"]
    files: dict[str, list[str]] = {}
    for split, n in (("train", train), ("dev", dev)):
        sst, rte, sts = ["sentence\tlabel"], ["index\tsentence1\tsentence2\tlabel"], [ROWS["STS-B/train.tsv"][0]]
        for i in range(n):
            y = rng.random() < 0.5
            word = rng.choice(good if y else bad)
            sst.append(f"the film was {word} .\t{int(y)}")
            rte.append(f"{i}\tThe film was {word}.\tThe film was {'good' if y else 'bad'}.\t"
                       f"{'entailment' if y else 'not_entailment'}")
            sts.append(f"{i}\tg\tf\ty\to\ts\ts\tThe film was {word}.\tThe film was good.\t{4.5 if y else 0.5}")
        files.update({f"SST-2/{split}.tsv": sst, f"RTE/{split}.tsv": rte, f"STS-B/{split}.tsv": sts})
    files["SST-2/test.tsv"] = ["index\tsentence", "0\tthe film was superb .", "1\tthe film was dull ."]
    return write_glue(root, files)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT with all-MiniLM-L6-v2's real WordPiece tokenizer, saved as a model folder."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def train(root: Path, model: Path | str, task: str, out: Path, *extra: str) -> dict:
    args = ["train", "--task", task, "--model", str(model), "--data", str(root), "--output", str(out),
            "--batch-size", "16", "--epochs", "4", "--lr", "3e-3", "--warmup-steps", "2", "--log-every", "4",
            "--save-every", "1000", *extra]
    assert lorakit_main(args) == 0
    return json.loads((out / "dev_scores.json").read_text())


def test_train_reload_predict_on_minilm(tmp_path: Path, capsys) -> None:
    """The real packaged all-MiniLM-L6-v2, LoRA on query/value plus the head, end to end."""
    root = write_sentiment(tmp_path / "data")
    scores = train(root, "minilm-l6", "sst2", tmp_path / "sst2")
    assert scores["accuracy"] == 100.0  # the label follows from one word: a working loop learns it
    config = json.loads((tmp_path / "sst2" / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"] and config["task_type"] == "SEQ_CLS"

    # A fresh base (new random head) plus the saved adapter gives the same dev metric and logits.
    model, tokenizer = load_classifier("minilm-l6", "sst2", tmp_path / "sst2" / "adapter")
    assert evaluate_glue(model, tokenizer, "sst2", "dev", root) == scores

    sub = tmp_path / "SST-2.tsv"
    assert lorakit_main(["predict", "--model", "minilm-l6", "--adapter", str(tmp_path / "sst2" / "adapter"),
                         "--task", "sst2", "--split", "test", "--data", str(root), "--output", str(sub),
                         "--glue-submission"]) == 0
    assert sub.read_text().splitlines() == ["index\tprediction", "0\t1", "1\t0"]
    capsys.readouterr()
    assert lorakit_main(["predict", "--model", "minilm-l6", "--adapter", str(tmp_path / "sst2" / "adapter"),
                         "--task", "sst2", "--text", "the film was lovely .", "the film was poor ."]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == ["1", "0"]


def test_full_finetune_and_regression_head(tmp_path: Path, tiny_bert_dir: Path) -> None:
    root = write_sentiment(tmp_path / "data")
    scores = train(root, tiny_bert_dir, "stsb", tmp_path / "stsb-full", "--full-finetune", "--epochs", "20")
    assert scores["pearson"] > 90
    model, tokenizer = load_classifier(str(tmp_path / "stsb-full" / "model"), "stsb")
    assert model.config.num_labels == 1
    assert evaluate_glue(model, tokenizer, "stsb", "dev", root) == pytest.approx(scores, abs=1e-9)


def test_task_adapters_with_different_heads_share_one_base(tmp_path: Path, tiny_bert_dir: Path) -> None:
    root = write_sentiment(tmp_path / "data")
    adapters = {}
    for task in ("stsb", "rte", "sst2"):  # 1, 2 and 2 outputs
        train(root, tiny_bert_dir, task, tmp_path / task, "--epochs", "1")
        adapters[task] = tmp_path / task / "adapter"
    multi = MultiTaskClassifier(str(tiny_bert_dir), adapters)
    for task, folder in adapters.items():
        examples = load_glue(task, "dev", root)
        alone, tokenizer = load_classifier(str(tiny_bert_dir), task, folder)
        expected = predict_logits(alone, tokenizer, task, examples)
        assert torch.equal(multi.logits(task, examples), expected), task
    # a mixed stream of requests comes back in request order, each from its own task's adapter
    dev = {t: load_glue(t, "dev", root) for t in adapters}
    requests = [(t, dev[t][i]) for i in range(3) for t in ("rte", "stsb", "sst2")]
    got = multi.classify(requests)
    for (task, example), value in zip(requests, got, strict=True):
        alone = multi.classify([(task, example)])[0]  # batched alone: other padding, float rounding only
        assert value == pytest.approx(alone, abs=1e-5)
    assert multi.switch("rte") < 0.05
    with pytest.raises(KeyError, match="no adapter for task 'cola'"):
        multi.switch("cola")


def _benchmark_setup(tmp_path: Path, tiny_bert_dir: Path) -> tuple[Path, Path]:
    root = write_sentiment(tmp_path / "data", train=32, dev=8)
    config = tmp_path / "glue.toml"
    config.write_text(f'model = "{tiny_bert_dir}"\ntasks = ["sst2", "stsb", "qqp"]\nbatch_size = 16\n'
                      'warmup_steps = 1\nlog_every = 1\n[lora]\nlr = 3e-3\n[full]\nlr = 1e-3\n'
                      '[task.stsb]\nepochs = 2\n[task.stsb.full]\nlr = 5e-4\n')
    return root, config


@pytest.mark.parametrize(("toml", "message"), [
    ('tasks = ["sst2"]\nlerning_rate = 1\n', "unknown setting 'lerning_rate'"),
    ('tasks = ["sst2"]\n[task.sst2]\nepochz = 3\n', "[task.sst2] unknown setting 'epochz' (did you mean 'epochs'?)"),
    ('tasks = ["sst2", "stsb"]\n[task.stsb.lora]\nrank = 4\n', "[task.stsb.lora] unknown setting 'rank'"),
    ('tasks = ["sst2"]\n[task.colaa]\nepochs = 1\n', "unknown GLUE task 'colaa'"),
    ('tasks = "sst2"\n', "tasks must be a list of GLUE task names"),
    ('task = "sst2"\n', "'task' holds [task.<name>] tables"),
    ('tasks = ["sst2", "stsb"]\n[task.stsb]\nepochs = -1\n', "stsb (lora): "),
])
def test_benchmark_config_mistakes_are_named_before_anything_trains(tmp_path: Path, toml: str, message: str,
                                                                     capsys) -> None:
    """Misspelled keys were dropped silently (every run trained with the default), and a bad key for the
    second task was found only after the first had trained."""
    config = tmp_path / "glue.toml"
    config.write_text(toml)
    assert lorakit_main(["benchmark", "glue", "--config", str(config), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{config}: " in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_benchmark_glue_command(tmp_path: Path, tiny_bert_dir: Path, capsys) -> None:
    """The multi-run command on two tiny tasks: every run is a real `lorakit train` process."""
    root, config = _benchmark_setup(tmp_path, tiny_bert_dir)
    out = tmp_path / "glue"
    assert lorakit_main(["benchmark", "glue", "--config", str(config), "--data", str(root), "--output", str(out),
                         "--full"]) == 0
    result = json.loads((out / "glue.json").read_text())
    assert result["skipped"] == ["qqp"]  # no QQP files here: said, not failed
    runs = {(r["task"], r["method"]): r for r in result["rows"]}
    assert set(runs) == {("sst2", "lora"), ("sst2", "full"), ("stsb", "lora"), ("stsb", "full")}
    assert runs["stsb", "lora"]["steps"] == 4 and runs["sst2", "lora"]["steps"] == 2  # per-task epochs
    stsb_full = json.loads((out / "stsb-full" / "run_config.json").read_text())
    assert stsb_full["lr"] == 5e-4 and stsb_full["full_finetune"] and stsb_full["epochs"] == 2
    for (task, method), row in runs.items():
        saved = out / f"{task}-{method}" / ("model" if method == "full" else "adapter")
        assert row["saved_bytes"] == sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())
        assert row["scores"] == json.loads((out / f"{task}-{method}" / "dev_scores.json").read_text())
    storage = result["storage"]
    assert storage["full_models_bytes"] == runs["sst2", "full"]["saved_bytes"] + runs["stsb", "full"]["saved_bytes"]
    assert storage["base_plus_adapters_bytes"] < storage["full_models_bytes"]
    switching = result["switching"]
    assert switching["adapters_loaded"] == 2 and all(c["same_predictions"] for c in switching["per_task"].values())
    assert all(c["max_abs_logit_diff"] == 0.0 for c in switching["per_task"].values())
    assert (out / "glue.png").stat().st_size > 0 and "Task switching with 2 adapters" in (out / "glue.md").read_text()

    # a second call reuses the finished runs instead of training again
    stamp = (out / "sst2-lora" / "summary.json").stat().st_mtime_ns
    assert lorakit_main(["benchmark", "glue", "--config", str(config), "--data", str(root), "--output", str(out),
                         "--tasks", "sst2"]) == 0
    assert (out / "sst2-lora" / "summary.json").stat().st_mtime_ns == stamp

    # a finished run that learned with other settings is refused, not reported under the new ones
    config.write_text(config.read_text().replace("lr = 3e-3", "lr = 1e-2"))
    capsys.readouterr()
    assert lorakit_main(["benchmark", "glue", "--config", str(config), "--data", str(root), "--output", str(out),
                         "--tasks", "sst2"]) != 0
    assert f"{out / 'sst2-lora'}: a finished run with lr = 0.003, but 0.01 was asked for" in capsys.readouterr().err
    config.write_text(config.read_text().replace("lr = 1e-2", "lr = 3e-3"))

    # a run a time budget (or an earlier lorakit's budget, or a signal) stopped is not finished: the next call
    # resumes it rather than reusing it
    for stopped in ({"stopped_by": "time_budget", "stopped_on_time_budget": True}, {"stopped_on_time_budget": True},
                    {"stopped_by": "signal", "stopped_on_time_budget": False}):
        summary = json.loads((out / "sst2-lora" / "summary.json").read_text())
        summary.pop("stopped_by")
        (out / "sst2-lora" / "summary.json").write_text(json.dumps({**summary, **stopped}))
        capsys.readouterr()
        assert lorakit_main(["benchmark", "glue", "--config", str(config), "--data", str(root), "--output",
                             str(out), "--tasks", "sst2"]) == 0
        resumed = f"$ lorakit train --config {out / 'sst2-lora' / 'benchmark_config.json'} --resume"
        assert resumed in capsys.readouterr().out, stopped
        assert json.loads((out / "sst2-lora" / "summary.json").read_text())["stopped_by"] is None


def test_benchmark_glue_protocol_searches_then_seeds(tmp_path: Path, tiny_bert_dir: Path, capsys) -> None:
    """--lr-factors/--seeds end to end (LoRA; both methods on scripted scores below): the other seed at the
    best rate, mean and spread from the runs' own dev scores; finished runs are reused."""
    root, config = _benchmark_setup(tmp_path, tiny_bert_dir)
    out = tmp_path / "protocol"
    args = ["benchmark", "glue", "--config", str(config), "--data", str(root), "--output", str(out), "--tasks",
            "sst2,qqp", "--lr-factors", "0.5,2", "--seeds", "0,1"]
    assert lorakit_main(args) == 0
    result = json.loads((out / "protocol.json").read_text())
    assert result["skipped"] == ["qqp"] and result["seeds"] == [0, 1]
    chosen = {r["method"]: lr_tag(r["lr"]) for r in result["rows"]}
    assert {p.name for p in out.iterdir() if p.is_dir()} == {  # one folder per run, named by its settings
        "sst2-lora-1.5e-3-s0", "sst2-lora-6e-3-s0", f"sst2-lora-{chosen['lora']}-s1"}
    for row in result["rows"]:
        assert [s["lr"] for s in row["search"]] == pytest.approx([3e-3 * 0.5, 3e-3 * 2])  # the config's rate
        best = max(row["search"], key=lambda s: s["score"])
        assert row["lr"] == best["lr"] and row["runs"][0]["run"] == best["run"]
        seed1 = Path(row["runs"][1]["run"])
        settings = json.loads((seed1 / "run_config.json").read_text())
        assert settings["seed"] == 1 and settings["lr"] == pytest.approx(row["lr"])
        assert settings["full_finetune"] == (row["method"] == "full")
        scores = [json.loads((Path(r["run"]) / "dev_scores.json").read_text())["accuracy"] for r in row["runs"]]
        assert row["mean"] == pytest.approx(sum(scores) / 2)
        assert row["stdev"] == pytest.approx(abs(scores[0] - scores[1]) / 2**0.5)  # the sample sd of two
    assert result["gaps"] == {}  # no full fine-tuning asked for
    assert "| sst2 (accuracy) | LoRA | 1.5e-3 -> " in (out / "protocol.md").read_text()

    stamps = {p: (p / "summary.json").stat().st_mtime_ns for p in out.iterdir() if p.is_dir()}
    assert lorakit_main(args) == 0  # everything finished: nothing trains again
    assert all((p / "summary.json").stat().st_mtime_ns == t for p, t in stamps.items())
    capsys.readouterr()
    assert lorakit_main([*args[:-1], "0,0"]) != 0
    assert "--seeds repeats a seed: [0, 0]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lorakit_main([*args[:-1], "0,x"])
    assert "argument --seeds: comma-separated integers, e.g. 0,1,2; got '0,x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lorakit_main([*args[:-3], "0,1", *args[-2:]])  # a factor of 0
    assert "argument --lr-factors: comma-separated numbers above 0" in capsys.readouterr().err
    assert lorakit_main([*args[:-3], "1,1.0", *args[-2:]]) != 0
    assert "--lr-factors repeats a factor" in capsys.readouterr().err


def test_protocol_picks_the_best_finite_rate_and_averages_the_seeds(tmp_path: Path, monkeypatch) -> None:
    """The selection rule on scripted scores: the best rate wherever it sits in the grid, the first of a tie,
    never a NaN; the other seeds at the chosen rate; a missing score is an error naming the file."""
    import lorakit.nlu.protocol as protocol

    def scripted(scores: dict[tuple[str, int], float]):
        def run_training(settings, folder):
            key = (protocol.lr_tag(settings["lr"]), settings["seed"])
            return {"run": str(folder), "scores": {} if scores[key] is None else {"matthews": scores[key]}}
        return run_training

    settings = {"task": "cola", "lr": 1e-3}
    nan = float("nan")
    monkeypatch.setattr(protocol, "run_training", scripted({("5e-4", 0): nan, ("1e-3", 0): 20.0, ("2e-3", 0): 30.0,
                                                            ("2e-3", 1): 34.0, ("2e-3", 2): 26.0}))
    row = protocol.search_then_seeds(settings, [0.5, 1, 2], [0, 1, 2], tmp_path)
    assert row["lr"] == pytest.approx(2e-3) and row["edge_of_grid"]  # the last factor; the NaN first lost
    assert [r["seed"] for r in row["runs"]] == [0, 1, 2] and row["runs"][1]["run"].endswith("cola-lora-2e-3-s1")
    assert row["mean"] == pytest.approx(30.0) and row["stdev"] == pytest.approx(4.0)
    monkeypatch.setattr(protocol, "run_training", scripted({("5e-4", 0): 25.0, ("1e-3", 0): 25.0, ("2e-3", 0): 5.0}))
    row = protocol.search_then_seeds(settings, [1, 0.5, 2], [0], tmp_path)
    assert row["lr"] == pytest.approx(1e-3) and not row["edge_of_grid"]  # a tie: the first factor given
    assert row["stdev"] is None and "25.00 (1 seed)" in protocol.protocol_markdown(
        {"seeds": [0], "lr_factors": [1, 0.5, 2], "rows": [row], "gaps": {}})
    monkeypatch.setattr(protocol, "run_training", scripted({("1e-3", 0): None}))
    with pytest.raises(ValueError, match=r"cola-lora-1e-3-s0/dev_scores\.json: no 'matthews' score"):
        protocol.search_then_seeds(settings, [1], [0], tmp_path)
    monkeypatch.setattr(protocol, "run_training", scripted({("1e-3", 0): nan}))
    with pytest.raises(ValueError, match="every run of the learning-rate search scored matthews NaN"):
        protocol.search_then_seeds(settings, [1], [0], tmp_path)

    # both methods: each its own search from its own rate, then LoRA's mean minus full fine-tuning's
    root = write_sentiment(tmp_path / "data", train=4, dev=2)
    config = {"data": str(root), "lora": {"lr": 1e-3}, "full": {"lr": 1e-4}}
    monkeypatch.setattr(protocol, "run_training", scripted({("1e-3", 0): 80.0, ("2e-3", 0): 82.0, ("2e-3", 1): 84.0,
                                                            ("1e-4", 0): 85.0, ("2e-4", 0): 84.0, ("1e-4", 1): 83.5}))
    monkeypatch.setattr(protocol, "glue_spec", lambda task: glue_spec("cola"))  # the scripts score matthews
    result = protocol.glue_protocol(config, ["sst2", "qqp"], tmp_path, True, [1, 2], [0, 1])
    assert result["skipped"] == ["qqp"] and [(r["method"], r["lr"]) for r in result["rows"]] == [
        ("lora", pytest.approx(2e-3)), ("full", pytest.approx(1e-4))]
    assert result["gaps"]["sst2"]["lora_minus_full"] == pytest.approx(83.0 - 84.25)
    assert result["gaps"]["sst2"]["at_most_a_point_behind"] is False
    assert "| sst2 | -1.25 | no |" in protocol.protocol_markdown(result)


def test_benchmark_sweep_command(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """Ranks and target sets for one task, each a real `lorakit train` process."""
    root, config = _benchmark_setup(tmp_path, tiny_bert_dir)
    sweep = tmp_path / "sweep"
    assert lorakit_main(["benchmark", "sweep", "--config", str(config), "--data", str(root), "--output", str(sweep),
                         "--task", "sst2", "--ranks", "1,8", "--targets", "query;query,value"]) == 0
    rows = json.loads((sweep / "sweep-sst2.json").read_text())
    # ranks on q,v, then target sets at the config's rank (8): q,v at r=8 is already a run, not trained twice
    assert [(r["rank"], r["targets"]) for r in rows] == [(1, ["query", "value"]), (8, ["query", "value"]),
                                                         (8, ["query"])]
    assert rows[0]["trainable_params"] < rows[1]["trainable_params"]
    assert (sweep / "sweep-sst2.png").stat().st_size > 0


@pytest.mark.parametrize("arch", ["roberta", "deberta-v2"])
def test_other_encoder_families_train_and_reload(tmp_path: Path, arch: str) -> None:
    """RoBERTa and DeBERTa-v2 (random, tiny) through the same path: default targets, head in the adapter."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    tokenizer = load_tokenizer("minilm-l6")  # any WordPiece ids fit a random model of that vocabulary size
    config = AutoConfig.for_model(arch, vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=160,
                                  type_vocab_size=2, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path / arch
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    root = write_sentiment(tmp_path / "data", train=32, dev=8)
    scores = train(root, folder, "rte", tmp_path / "run", "--epochs", "1")
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == {"roberta": ["query", "value"],
                                         "deberta-v2": ["query_proj", "value_proj"]}[arch]
    assert adapter["modules_to_save"] == ["classifier"]
    model, tok = load_classifier(str(folder), "rte", tmp_path / "run" / "adapter")
    assert evaluate_glue(model, tok, "rte", "dev", root) == scores
