"""Slot error rate (Dušek et al. 2019): hand-made outputs for every E2E slot, the command lines, and the E2E dev
references' own SER measured on the real data."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import shared_data_dir

from lorakit.cli import main as lorakit_main
from lorakit.metrics import MetricsFileError, read_mrs, slot_error_rate, slot_errors

E2E_DIR = shared_data_dir() / "e2e" if shared_data_dir() else None
needs_e2e = pytest.mark.skipif(E2E_DIR is None or not (E2E_DIR / "devset.csv").is_file(),
                               reason="E2E devset.csv not found (set LORAKIT_DATA or put shared/data beside the "
                                      "checkout)")

PR, CR, FF = "priceRange", "customer rating", "familyFriendly"
OK: tuple = ((), (), ())
# (mr, output, (missing, added, wrong)); wrong holds the value the output gives
CASES = [
    # name: repeated, without its "The", possessive, delexicalised; missing; another venue's name instead
    ("name[The Eagle], eatType[pub]", "Eagle is a pub. The Eagle is quiet.", OK),
    ("name[Browns Cambridge], eatType[pub]", "Brown's Cambridge is a pub.", OK),
    ("name[The Eagle], near[Café Rouge]", "X-name is near X-near.", OK),
    ("name[The Eagle], eatType[pub]", "It is a pub.", ([("name", "The Eagle")], (), ())),
    ("name[The Eagle], eatType[pub]", "The Mill is a pub.", ((), (), [("name", "The Mill")])),
    # near: written without the accent; a near venue holding another slot's word ("Café", "Indian") adds nothing;
    # The Rice Boat is both a name and a near value
    ("name[Zizzi], near[Café Rouge]", "Zizzi is near Cafe Rouge.", OK),
    ("name[Zizzi], near[Raja Indian Cuisine]", "Zizzi is near Raja Indian Cuisine.", OK),
    ("name[Zizzi], near[The Rice Boat]", "Zizzi is close to The Rice Boat.", OK),
    ("name[The Rice Boat], near[Burger King]", "The Rice Boat is near Burger King.", OK),
    ("name[Zizzi], near[Burger King]", "Zizzi is a pub.", ([("near", "Burger King")], [("eatType", "pub")], ())),
    ("name[Zizzi]", "Zizzi is near Burger King.", ((), [("near", "Burger King")], ())),
    # eatType, food
    ("name[Zizzi], eatType[coffee shop]", "Zizzi is a café.", OK),
    ("name[Zizzi], eatType[pub]", "Zizzi is a restaurant.", ((), (), [("eatType", "restaurant")])),
    ("name[Zizzi], food[English]", "Zizzi serves British food.", OK),
    ("name[Zizzi], food[French]", "Zizzi serves Italian food.", ((), (), [("food", "Italian")])),
    ("name[Zizzi], food[Fast food]", "Zizzi is by the river.", ([("food", "Fast food")], [("area", "riverside")], ())),
    # priceRange: numeric and word forms, equivalent both ways, a contradiction, a second value beside the MR's
    ("name[Zizzi], priceRange[£20-25]", "Zizzi's prices are £20-25.", OK),
    ("name[Zizzi], priceRange[less than £20]", "Zizzi costs less than £20.", OK),
    ("name[Zizzi], priceRange[more than £30]", "Zizzi costs more than £30.", OK),
    ("name[Zizzi], priceRange[cheap]", "Zizzi is cheap.", OK),
    ("name[Zizzi], priceRange[moderate]", "Zizzi is moderately priced.", OK),
    ("name[Zizzi], priceRange[high]", "Zizzi is expensive.", OK),
    ("name[Zizzi], priceRange[less than £20]", "Zizzi is inexpensive.", OK),
    ("name[Zizzi], priceRange[cheap]", "Zizzi costs under £20.", OK),
    ("name[Zizzi], priceRange[high]", "Zizzi has a high price range and costs over £30.", OK),
    ("name[Zizzi], priceRange[cheap]", "Zizzi costs more than £30.", ((), (), [(PR, "more than £30")])),
    ("name[Zizzi], priceRange[£20-25]", "Zizzi is cheap.", ((), (), [(PR, "cheap")])),
    ("name[Zizzi], priceRange[cheap]", "Zizzi is cheap and over £30.", ((), [(PR, "more than £30")], ())),
    ("name[Zizzi], priceRange[moderate]", "Zizzi is a pub.", ([(PR, "moderate")], [("eatType", "pub")], ())),
    # customer rating: numbers and words, "1 out of 5 stars" is one mention (not also "5 stars")
    ("name[Zizzi], customer rating[1 out of 5]", "Zizzi is rated 1 out of 5 stars.", OK),
    ("name[Zizzi], customer rating[3 out of 5]", "Zizzi has a customer rating of 3 out of 5.", OK),
    ("name[Zizzi], customer rating[5 out of 5]", "Zizzi has a 5 out of 5 rating.", OK),
    ("name[Zizzi], customer rating[low]", "Zizzi has a low customer rating.", OK),
    ("name[Zizzi], customer rating[average]", "Zizzi: customers rated it as average.", OK),
    ("name[Zizzi], customer rating[high]", "Zizzi is highly rated.", OK),
    ("name[Zizzi], customer rating[low]", "Zizzi has a 1 out of 5 rating.", OK),
    ("name[Zizzi], customer rating[5 out of 5]", "Zizzi has a high customer rating.", OK),
    ("name[Zizzi], customer rating[low]", "Zizzi has a 5 out of 5 rating.", ((), (), [(CR, "5 out of 5")])),
    ("name[Zizzi], customer rating[high]", "Zizzi does not have good reviews.", ((), (), [(CR, "low")])),
    # area
    ("name[Zizzi], area[city centre]", "Zizzi is in the centre of the city.", OK),
    ("name[Zizzi], area[riverside]", "Zizzi is on the riverside.", OK),
    ("name[Zizzi], area[riverside]", "Zizzi is in the city centre.", ((), (), [("area", "city centre")])),
    # familyFriendly: positive and negated phrasings, flipped both ways, added when the MR has no such slot
    ("name[Zizzi], familyFriendly[yes]", "Zizzi is family friendly.", OK),
    ("name[Zizzi], familyFriendly[yes]", "Zizzi is kid-friendly.", OK),
    ("name[Zizzi], familyFriendly[yes]", "At Zizzi children are welcome.", OK),
    ("name[Zizzi], familyFriendly[yes]", "Zizzi welcomes families.", OK),
    ("name[Zizzi], familyFriendly[no]", "Zizzi is not family-friendly.", OK),
    ("name[Zizzi], familyFriendly[no]", "Zizzi isn't kid friendly.", OK),
    ("name[Zizzi], familyFriendly[no]", "Zizzi is non family-friendly.", OK),
    ("name[Zizzi], familyFriendly[no]", "Zizzi: no children.", OK),
    ("name[Zizzi], familyFriendly[no]", "Zizzi is adults only.", OK),
    ("name[Zizzi], familyFriendly[no]", "At Zizzi children are not allowed.", OK),
    ("name[Zizzi], familyFriendly[no]", "Zizzi does not allow children.", OK),
    ("name[Zizzi], familyFriendly[no]", "Zizzi is not suitable for kids.", OK),
    ("name[Zizzi], familyFriendly[no]", "Zizzi is family friendly.", ((), (), [(FF, "yes")])),
    ("name[Zizzi], familyFriendly[yes]", "Zizzi is not family friendly.", ((), (), [(FF, "no")])),
    ("name[Zizzi], familyFriendly[yes]", "Zizzi is a pub.", ([(FF, "yes")], [("eatType", "pub")], ())),
    ("name[Zizzi], eatType[pub]", "Zizzi is a family friendly pub.", ((), [(FF, "yes")], ())),
]


@pytest.mark.parametrize(("mr", "text", "expected"), CASES)
def test_slot_errors_by_hand(mr: str, text: str, expected: tuple) -> None:
    errors = slot_errors(mr, text)
    assert (errors.missing, errors.added, errors.wrong) == tuple(list(part) for part in expected), str(errors)


def test_every_slot_is_covered_by_the_cases() -> None:
    slots = {key.split("[")[0].strip() for mr, _, _ in CASES for key in mr.split("],")}
    assert slots == {"name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near"}


def test_mr_spellings_and_values_without_a_pattern() -> None:
    assert str(slot_errors("name[Zizzi], customerRating[low]", "Zizzi is poorly rated.")) == "ok"
    errors = slot_errors("name[Casa Pepe], food[Spanish], terrace[yes]", "Casa Pepe serves Spanish food.")
    assert (errors.missing, errors.added, errors.wrong) == ([("terrace", "yes")], [], [])  # matched literally
    assert str(slot_errors("name[Zizzi], familyFriendly[no]", "Zizzi is family friendly.")) == \
        "wrong familyFriendly[yes] (MR: no)"
    with pytest.raises(ValueError, match="malformed MR"):
        slot_errors("name[Zizzi", "Zizzi.")


def test_slot_error_rate_counts_over_a_corpus() -> None:
    mrs = ["name[Zizzi], priceRange[cheap], familyFriendly[no]", "name[Aromi], area[riverside]",
           "name[Cotto], food[French]"]
    texts = ["Zizzi is cheap and family friendly.", "Aromi is on the riverside.", "Cotto is a pub."]
    result = slot_error_rate(mrs, texts)
    assert result == {"SER": pytest.approx(100 * 3 / 7), "missing": 1, "added": 1, "wrong": 1, "slots": 7,
                      "outputs": 3, "with_errors": [0, 2]}
    with pytest.raises(ValueError, match="2 outputs for 3 MRs"):
        slot_error_rate(mrs, texts[:2])
    with pytest.raises(ValueError, match="no outputs"):
        slot_error_rate([], [])
    with pytest.raises(TypeError):
        slot_error_rate(mrs[0], texts[0])


def test_read_mrs_lines_and_csv(tmp_path: Path) -> None:
    lines = tmp_path / "mrs.txt"
    lines.write_text("name[Zizzi], eatType[pub]\nname[Aromi]\n\n", encoding="utf-8")
    assert read_mrs(lines) == ["name[Zizzi], eatType[pub]", "name[Aromi]"]
    table = tmp_path / "dev.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["mr", "ref"], ["name[B]", "B."], ["name[B]", "It is B."], ["name[A]", "A."]])
    assert read_mrs(table) == ["name[B]", "name[A]"]  # first-appearance order, as the references are grouped
    bad = tmp_path / "bad.txt"
    bad.write_text("name[Zizzi]\n\nname[Aromi]\n", encoding="utf-8")
    with pytest.raises(MetricsFileError, match=r"bad\.txt: line 2: malformed MR"):
        read_mrs(bad)
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(MetricsFileError, match="MRs file is empty"):
        read_mrs(tmp_path / "empty.txt")
    # a slot twice (also under E2E's other spelling) or without a value: SER cannot score it (the empty value
    # counted as realised); both were accepted, or refused without the file and line
    for text, message in [("name[X]\nname[X], name[Y]\n", "line 2: MR names a slot twice"),
                          ("name[X], customerRating[low], customer rating[high]\n", "line 1: MR names a slot twice"),
                          ("name[X]\nname[Y], eatType[]\n", "line 2: MR gives slot 'eatType' no value")]:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(MetricsFileError, match=rf"bad\.txt: {re.escape(message)}"):
            read_mrs(bad)


def _no_scorer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The five E2E metrics start Java; these tests are about SER beside them."""
    monkeypatch.setattr("lorakit.metrics.e2e.e2e_scores", lambda hyps, refs: {"BLEU": 0.5})


MRS = ["name[Zizzi], familyFriendly[no]", "name[Aromi], priceRange[cheap]"]
OUTPUTS = ["Zizzi is family friendly.", "Aromi is cheap."]


def test_cli_metrics_e2e_with_mrs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _no_scorer(monkeypatch)
    refs, hyp, mrs, report = (tmp_path / n for n in ("refs.txt", "hyp.txt", "mrs.txt", "slot-errors.txt"))
    refs.write_text("Zizzi is for adults.\n\nAromi is cheap.\n", encoding="utf-8")
    hyp.write_text("\n".join(OUTPUTS) + "\n", encoding="utf-8")
    mrs.write_text("\n".join(MRS) + "\n", encoding="utf-8")
    base = ["metrics", "e2e", "--refs", str(refs), "--hyp", str(hyp)]
    assert lorakit_main([*base, "--mrs", str(mrs), "--slot-errors", str(report), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"BLEU": 0.5, "SER": 25.0}
    text = report.read_text(encoding="utf-8")
    assert text.startswith("SER 25.00%: 1 of 2 outputs with slot errors (missing 0, added 0, wrong 1; 4 slots)")
    assert "line 1: wrong familyFriendly[yes] (MR: no)" in text and "Aromi" not in text

    assert lorakit_main([*base, "--slot-errors", str(report)]) == 2
    assert "give --mrs MRS_FILE" in capsys.readouterr().err
    mrs.write_text(MRS[0] + "\n", encoding="utf-8")
    assert lorakit_main([*base, "--mrs", str(mrs)]) == 2
    assert "1 MRs, but" in capsys.readouterr().err


def test_cli_evaluate_task_e2e_reports_ser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _no_scorer(monkeypatch)
    (tmp_path / "e2e").mkdir()
    with (tmp_path / "e2e" / "devset.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["mr", "ref"], [MRS[0], "Zizzi is for adults."], [MRS[1], "Aromi is cheap."]])
    predictions, report = tmp_path / "pred.txt", tmp_path / "errors.txt"
    predictions.write_text("\n".join(OUTPUTS) + "\n", encoding="utf-8")
    args = ["evaluate", str(predictions), "--task", "e2e", "--data", str(tmp_path)]
    assert lorakit_main([*args, "--slot-errors", str(report)]) == 0
    out, err = capsys.readouterr()
    assert "SER: 25.0000" in out and f"wrote the outputs with slot errors to {report}" in err
    assert "line 1: wrong familyFriendly[yes] (MR: no)" in report.read_text(encoding="utf-8")
    assert lorakit_main(["evaluate", str(predictions), "--task", "webnlg", "--slot-errors", str(report)]) == 2
    assert "it needs --task e2e" in capsys.readouterr().err


def test_cli_evaluate_limit_scores_the_first_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys) -> None:
    """``lorakit generate --limit N`` writes N lines; ``evaluate --limit N`` scores them against the first N
    inputs' references (and only those), and still refuses a file of any other length."""
    _no_scorer(monkeypatch)
    (tmp_path / "e2e").mkdir()
    with (tmp_path / "e2e" / "devset.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["mr", "ref"], [MRS[0], "Zizzi is for adults."], [MRS[1], "Aromi is cheap."]])
    predictions, refs = tmp_path / "pred.txt", tmp_path / "refs.txt"
    predictions.write_text(OUTPUTS[0] + "\n", encoding="utf-8")
    args = ["evaluate", str(predictions), "--task", "e2e", "--data", str(tmp_path), "--json"]
    assert lorakit_main([*args, "--limit", "1", "--write-refs", str(refs)]) == 0
    assert json.loads(capsys.readouterr().out)["SER"] == 50.0  # 1 wrong slot of the first MR's 2
    assert refs.read_text(encoding="utf-8") == "Zizzi is for adults.\n"
    assert lorakit_main(args) == 2  # one line for two inputs
    capsys.readouterr()
    assert lorakit_main([*args, "--limit", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    assert lorakit_main(["evaluate", str(predictions), "--data", str(refs), "--limit", "1"]) == 2
    assert "needs --task" in capsys.readouterr().err


@needs_e2e
def test_dev_references_own_ser() -> None:
    """The human references are noisy: the matcher must find that noise, and only that much.

    Dušek et al. (2019) re-annotated the original E2E data with their matcher and report its SER per split
    in their Table 1; we could not retrieve that table's text here, so we quote no number from it (their
    introduction, which we could read, says up to 40% of the E2E data's instances omit or add information).
    Their script (tuetschek/e2e-cleaning slot_error.py, run on this devset.csv) gives 11.42% over all 4,672
    references (added 519, missing 2,367, wrong 283 of 27,759 slots) and 11.47% over the first reference of
    each MR. Ours, measured: 9.75% over all references (missing 2,000, added 446, wrong 260) and 9.20% over
    the first ones (243, 40, 34 of 3,445); lower mostly because we accept "cheap" for cheap's numeric twin
    and the reverse, names without "The", and a few more phrasings (see the module docstring).
    A matcher that finds nothing scores 100%, one that finds everything 0%; either fails here.
    """
    from lorakit.data.e2e import load_e2e

    dev = load_e2e("dev", E2E_DIR.parent)
    mrs = [ex.meta["mr"] for ex in dev for _ in ex.references]
    every = slot_error_rate(mrs, [ref for ex in dev for ref in ex.references])
    assert every["outputs"] == 4672 and every["slots"] == 27759
    assert 8.75 <= every["SER"] <= 10.75, every["SER"]
    # omission is the commonest error in the data (as the paper finds for the systems trained on it)
    assert every["missing"] > every["added"] + every["wrong"]
    first = slot_error_rate([ex.meta["mr"] for ex in dev], [ex.references[0] for ex in dev])
    assert 8.0 <= first["SER"] <= 10.5, first["SER"]
    # the same references against the wrong MRs (each MR with its neighbour's text): far more errors
    shifted = slot_error_rate([ex.meta["mr"] for ex in dev], [dev[i - 1].references[0] for i in range(len(dev))])
    assert shifted["SER"] > 25
