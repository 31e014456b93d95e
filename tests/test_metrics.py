"""NLG metrics against the official E2E scorer's numbers, on real files; Java-dependent parts included."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import REPO, shared_data_dir

from lorakit.cli import main as lorakit_main
from lorakit.data import Example
from lorakit.metrics import (
    E2E_METRICS,
    Meteor15,
    MetricsFileError,
    MetricsWarning,
    corpus_bleu,
    corpus_nist,
    e2e_scores,
    read_e2e_refs,
    read_hypotheses,
    webnlg_scores,
    webnlg_scores_by_category,
)
from lorakit.metrics.cli import add_metrics_parser
from lorakit.metrics.coco import java

CHECK = shared_data_dir() / "e2e" / "scorer-check" if shared_data_dir() else None
needs_check_data = pytest.mark.skipif(CHECK is None or not CHECK.is_dir(),
                                      reason="e2e/scorer-check not found (set LORAKIT_DATA or put shared/data beside "
                                             "the checkout)")
needs_java = pytest.mark.skipif(java() is None, reason="java not found: METEOR and the PTB tokenizer jar need it")

# measure_scores.py -p output on the scorer-check files (its README), and the agreement asked of us.
OFFICIAL = {
    "lastref": {"BLEU": 0.6005, "NIST": 8.6323, "METEOR": 0.4538, "ROUGE_L": 0.6446, "CIDEr": 1.8691},
    "template": {"BLEU": 0.5139, "NIST": 6.9442, "METEOR": 0.3973, "ROUGE_L": 0.6111, "CIDEr": 1.7761},
}
TOLERANCE = {"BLEU": 0.005, "NIST": 0.02, "METEOR": 0.005, "ROUGE_L": 0.005, "CIDEr": 0.02}

# Three inputs with 3, 1 and 2 references (a ragged multi-reference file); each hypothesis is one of them.
REFS_TEXT = ("The Eagle is a cheap coffee shop near Burger King.\nThere is a cheap coffee shop called The Eagle.\n"
             "The Eagle coffee shop is cheap.\n\nAromi is a family-friendly pub in the city centre.\n\n"
             "Cotto serves Italian food for £20-25.\nCotto is an Italian restaurant with prices of £20-25.\n")
HYPS = ["There is a cheap coffee shop called The Eagle.", "Aromi is a family-friendly pub in the city centre.",
        "Cotto is an Italian restaurant with prices of £20-25."]


def official_case(name: str) -> tuple[list[str], list[list[str]]]:
    refs = read_e2e_refs(CHECK / f"refs_{name}.txt")
    return read_hypotheses(CHECK / f"hyp_{name}.txt", expected=len(refs)), refs


@pytest.fixture(scope="module")
def meteor():
    """One METEOR process for the module: starting one takes seconds (it loads a paraphrase table)."""
    if java() is None:
        yield None
        return
    with Meteor15() as shared:
        yield shared


@pytest.fixture
def small_files(tmp_path: Path) -> tuple[Path, Path]:
    refs, hyp = tmp_path / "refs.txt", tmp_path / "hyp.txt"
    refs.write_text(REFS_TEXT, encoding="utf-8")
    hyp.write_text("\n".join(HYPS) + "\n", encoding="utf-8")
    return refs, hyp


@needs_check_data
@pytest.mark.parametrize("case", sorted(OFFICIAL))
def test_official_e2e_scorer_numbers(case: str, meteor) -> None:
    hyps, refs = official_case(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricsWarning)  # no-Java runs still check the four other metrics
        scores = e2e_scores(hyps, refs, meteor=meteor)
    assert list(scores) == list(E2E_METRICS)
    for name, expected in OFFICIAL[case].items():
        if name == "METEOR" and java() is None:
            assert scores[name] is None
            continue
        assert abs(scores[name] - expected) <= TOLERANCE[name], (name, scores[name], expected)
        if java() is not None:  # with the official tokenizer jar the match is exact at the printed precision
            assert round(scores[name], 4) == expected, (name, scores[name], expected)


@needs_check_data
def test_without_java_python_tokenizer_still_matches_official(tmp_path: Path, monkeypatch) -> None:
    """No java on PATH: METEOR is missing (not 0), ROUGE_L and CIDEr fall back to the Python PTB tokenizer."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert java() is None
    hyps, refs = official_case("lastref")
    with pytest.warns(MetricsWarning, match="java not found"):
        scores = e2e_scores(hyps, refs)
    assert scores["METEOR"] is None
    for name in ("BLEU", "NIST", "ROUGE_L", "CIDEr"):
        assert abs(scores[name] - OFFICIAL["lastref"][name]) <= TOLERANCE[name], (name, scores[name])


def test_missing_java_cli_reports_meteor_as_missing(small_files: tuple[Path, Path], tmp_path: Path) -> None:
    refs, hyp = small_files
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "PYTHONPATH")}
    env.update(PATH=str(tmp_path), PYTHONPATH=str(REPO / "src"))  # tmp_path holds no java
    done = subprocess.run([sys.executable, "-m", "lorakit", "metrics", "e2e", "--refs", str(refs), "--hyp", str(hyp),
                           "--json"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert scores["METEOR"] is None
    assert scores["BLEU"] == 1.0 and scores["ROUGE_L"] == 1.0
    assert "warning: java not found on PATH: METEOR" in done.stderr


def test_multi_reference_files_and_scores(small_files: tuple[Path, Path], meteor) -> None:
    refs_path, hyp_path = small_files
    refs = read_e2e_refs(refs_path)
    assert [len(r) for r in refs] == [3, 1, 2]
    assert refs[2][0] == "Cotto serves Italian food for £20-25."
    hyps = read_hypotheses(hyp_path, expected=3)
    scores = e2e_scores(hyps, refs, meteor=meteor)
    # Each output equals one (not always the first) of its references: a perfect match under every metric.
    assert scores["BLEU"] == pytest.approx(1.0) and scores["ROUGE_L"] == pytest.approx(1.0)
    assert scores["NIST"] > 0 and scores["CIDEr"] > 0
    if meteor is not None:
        assert scores["METEOR"] > 0.9
    # Clipping is against the largest count in any one reference, so a reference set never scores below
    # its best member.
    out = ["The Eagle is a cheap coffee shop near the river."]
    one = ["The Eagle is a cheap pub near the river."]
    worse = corpus_bleu(out, [one], lowercase=True)
    assert 0 < worse < corpus_bleu(out, [[*one, "A cheap coffee shop near the river."]], lowercase=True) < 100


def test_nist_by_hand() -> None:
    """Doddington's formula on a corpus small enough to compute on paper (see corpus_nist's docstring)."""
    assert corpus_nist(["a b"], [["a b"]]) == pytest.approx(1.0)  # unigrams carry 1 bit each, "a b" none
    beta = -math.log(0.5) / math.log(1.5) ** 2
    # refs "a b c" and "a c": 5 words, a and c twice, "a c" once; output "a c" is 0.8 of the mean ref length.
    expected = (math.log2(5 / 2) + math.log2(2 / 1)) * math.exp(-beta * math.log(2 / 2.5) ** 2)
    assert corpus_nist(["A C"], [["a b c", "a c"]]) == pytest.approx(expected)


def test_bad_prediction_files(tmp_path: Path) -> None:
    short, empty, blank = tmp_path / "short.txt", tmp_path / "empty.txt", tmp_path / "blank.txt"
    short.write_text("one\ntwo\n", encoding="utf-8")
    empty.write_text("", encoding="utf-8")
    blank.write_text("one\n\nthree\n", encoding="utf-8")
    with pytest.raises(MetricsFileError, match=r"short\.txt: 2 hypothesis lines, but the references have 3 inputs"):
        read_hypotheses(short, expected=3)
    with pytest.raises(MetricsFileError, match=r"empty\.txt: hypotheses file is empty \(expected 3 lines"):
        read_hypotheses(empty, expected=3)
    with pytest.warns(MetricsWarning, match=r"blank\.txt: 1 empty hypothesis line\(s\) \(line 2\)"):
        assert read_hypotheses(blank, expected=3) == ["one", "", "three"]


def test_bad_reference_files(tmp_path: Path) -> None:
    single, gap = tmp_path / "single.txt", tmp_path / "gap.txt"
    single.write_text("\ufeffref one\nref two\n", encoding="utf-8")  # no empty line: one reference per input
    gap.write_text("a\n\n\nb\n", encoding="utf-8")
    assert read_e2e_refs(single) == [["ref one"], ["ref two"]]
    with pytest.raises(MetricsFileError, match=r"gap\.txt: line 3: two empty lines in a row"):
        read_e2e_refs(gap)
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference lists"):
        e2e_scores(["a", "b"], [["a"]])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lorakit")
    add_metrics_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_json_output(small_files: tuple[Path, Path], capsys) -> None:
    refs, hyp = small_files
    args = parse(["metrics", "e2e", "--refs", str(refs), "--hyp", str(hyp), "--json"])
    assert args.func(args) == 0
    scores = json.loads(capsys.readouterr().out)  # the whole output is one JSON object
    assert list(scores) == ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"]
    assert scores["BLEU"] == 1.0 and scores["ROUGE_L"] == 1.0
    assert all(v is None or round(v, 4) == v for v in scores.values())  # four decimals, like the scorer


def test_cli_reports_file_errors(small_files: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    refs, _ = small_files
    short = tmp_path / "short.txt"
    short.write_text("only one line\n", encoding="utf-8")
    assert lorakit_main(["metrics", "e2e", "--refs", str(refs), "--hyp", str(short)]) == 2
    assert "short.txt: 1 hypothesis lines, but the references have 3 inputs" in capsys.readouterr().err


def test_webnlg_scores_seen_unseen_all(meteor) -> None:
    examples = [Example("s1", ("Alan Bean was born in Wheeler, Texas.", "Wheeler, Texas is where Alan Bean was born."),
                        {"seen": True}),
                Example("s2", ("The Acharya Institute of Technology is in Bangalore.",), {"seen": True}),
                Example("s3", ("Abilene, Texas is in the United States.", "Abilene is a city in Texas, USA."),
                        {"seen": False})]
    # Outputs equal one reference each (the second for s1 and s3): best-of-references TER is 0.
    hyps = [examples[0].references[1], examples[1].references[0], examples[2].references[1]]
    by_category = webnlg_scores_by_category(examples, hyps)
    assert set(by_category) == {"seen", "unseen", "all"}
    for scores in by_category.values():
        assert scores["BLEU"] == pytest.approx(100.0) and scores["TER"] == pytest.approx(0.0)
        assert scores["METEOR"] is None if java() is None else scores["METEOR"] > 0.9
    wrong = webnlg_scores(["Alan Bean was born in Texas."], [list(examples[0].references)], meteor=meteor)
    assert 0 < wrong["BLEU"] < 100 and 0 < wrong["TER"] < 1  # 1 deletion-level edit away from ref 1


def test_cli_webnlg_table_without_java(small_files: tuple[Path, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    refs, hyp = small_files
    monkeypatch.setenv("PATH", str(tmp_path))  # no java there: METEOR shows as missing, the rest is scored
    assert lorakit_main(["metrics", "dart", "--refs", str(refs), "--hyp", str(hyp)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[2:] == ["BLEU: 100.0000", "METEOR: n/a (java not found)", "TER: 0.0000"]
    assert "lorakit metrics: warning: java not found" in err


def test_evaluate_scores_a_split_by_its_own_references(tmp_path: Path, capsys) -> None:
    from train_fixtures import write_e2e

    from lorakit.data import load_e2e
    from lorakit.metrics import evaluate_predictions

    root = write_e2e(tmp_path / "data")
    dev = load_e2e("dev", root)
    perfect, wrong = tmp_path / "perfect.txt", tmp_path / "wrong.txt"
    perfect.write_text("\n".join(ex.references[0] for ex in dev) + "\n", encoding="utf-8")
    wrong.write_text("\n".join("Zizzi is a pub." for _ in dev) + "\n", encoding="utf-8")
    best, worst = (evaluate_predictions("e2e", "dev", p, root) for p in (perfect, wrong))
    assert best["BLEU"] == pytest.approx(1.0) and best["ROUGE_L"] == pytest.approx(1.0)
    assert worst["BLEU"] < 0.5 and worst["ROUGE_L"] < best["ROUGE_L"]

    refs = tmp_path / "refs.txt"
    args = ["evaluate", str(perfect), "--task", "e2e", "--data", str(root), "--json", "--write-refs", str(refs)]
    assert lorakit_main(args) == 0
    assert json.loads(capsys.readouterr().out)["BLEU"] == 1.0
    assert read_e2e_refs(refs) == [list(ex.references) for ex in dev]  # the layout `metrics e2e` reads

    short = tmp_path / "short.txt"
    short.write_text("one line\n", encoding="utf-8")
    assert lorakit_main(["evaluate", str(short), "--task", "e2e", "--data", str(root)]) == 2
    assert f"{short}: 1 hypothesis lines, but the references have {len(dev)} inputs" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert lorakit_main(["evaluate", str(empty), "--task", "e2e", "--data", str(root)]) == 2
    assert "empty.txt: hypotheses file is empty" in capsys.readouterr().err
