"""Semantic reranking (lorakit.decode.rerank) and ``lorakit generate --rerank``'s checks."""

from __future__ import annotations

import argparse

import pytest

from lorakit.decode.cli import add_generate_parser
from lorakit.decode.rerank import rerank_by_slots
from lorakit.metrics.ser import slot_errors

MR = "name[The Eagle], eatType[pub], priceRange[cheap], familyFriendly[no]"


def test_the_first_hypothesis_with_fewest_slot_errors_wins():
    right = "The Eagle is a cheap pub that is not family friendly."
    right_too = "The Eagle is a cheap pub which is not kid friendly."
    flipped = "The Eagle is a cheap, family friendly pub."  # familyFriendly wrong
    dropped = "The Eagle is a pub that is not family friendly."  # priceRange missing
    chosen, summary = rerank_by_slots([MR, MR, MR, MR], [[flipped, dropped, right, right_too],
                                                         [right_too, right], [dropped], [dropped, flipped]])
    assert chosen == [right, right_too, dropped, dropped]  # ties go to the more likely (earlier) hypothesis
    assert (summary.inputs, summary.changed) == (4, 1)
    assert (summary.errors_top, summary.errors_chosen) == (1 + 0 + 1 + 1, 0 + 0 + 1 + 1)
    assert "1 picks changed" in str(summary) and "slot errors 3 (top beams) -> 2" in str(summary)


def test_consensus_breaks_ties_among_the_least_wrong():
    odd = "The Eagle, a pub, is cheap and not for families."
    usual = "The Eagle is a cheap pub that is not family friendly."
    usual_too = "The Eagle is a cheap pub that is not family-friendly."
    dropped = "The Eagle is a pub that is not family friendly."
    lists = [[dropped, odd, usual, usual_too]]
    assert [slot_errors(MR, t).count for t in lists[0]] == [1, 0, 0, 0]
    assert rerank_by_slots([MR], lists)[0] == [odd]  # order: the first of the least wrong
    chosen, summary = rerank_by_slots([MR], lists, ties="consensus")
    assert chosen == [usual] and summary.changed == 1  # the two alike outvote the odd one; a tie goes first
    with pytest.raises(ValueError, match="ties must be one of"):
        rerank_by_slots([MR], lists, ties="vote")


def test_mismatched_or_empty_lists_are_refused():
    with pytest.raises(ValueError, match="2 MRs but 1 candidate lists"):
        rerank_by_slots([MR, MR], [["x"]])
    with pytest.raises(ValueError, match="input 1 has an empty candidate list"):
        rerank_by_slots([MR, MR], [["x"], []])


def _generate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lorakit")
    add_generate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["generate", "--model", "no-such-model-folder", "--output", "out.txt", *argv])
    return args.func(args)


@pytest.mark.parametrize(("argv", "message"), [
    (["--task", "webnlg", "--split", "dev", "--rerank", "slots"], "E2E MRs"),
    (["--task", "e2e", "--split", "dev", "--rerank-samples", "2"], "is for --rerank slots after greedy"),
    (["--task", "e2e", "--split", "dev", "--rerank", "slots", "--rerank-samples", "2"], "beam search reranks"),
    (["--task", "e2e", "--split", "dev", "--num-beams", "1", "--rerank", "slots"], "--num-beams 2 or more"),
    (["--input", "mrs.txt", "--raw", "--num-beams", "4", "--rerank", "slots"], "nor --raw"),
])
def test_rerank_needs_e2e_mrs_and_beams_before_any_model_loads(argv, message):
    """A missing model folder would fail later: these fail first, naming what to change."""
    with pytest.raises(ValueError, match=message):
        _generate(argv)


def test_an_input_file_that_is_not_mrs_is_refused_naming_the_line(tmp_path):
    mrs = tmp_path / "mrs.txt"
    mrs.write_text("name[The Eagle], eatType[pub]\nname : Zizzi | Type : pub\nThe Eagle is a pub.\n", "utf-8")
    with pytest.raises(ValueError, match=r"mrs\.txt, line 3: not an E2E MR"):
        _generate(["--input", str(mrs), "--num-beams", "4", "--rerank", "slots"])
    mrs.write_text("name[The Eagle]\nname : Zizzi | Type : pub | name : Aromi\n", "utf-8")
    with pytest.raises(ValueError, match=r"mrs\.txt, line 2: MR names a slot twice"):
        _generate(["--input", str(mrs), "--num-beams", "4", "--rerank", "slots"])


def test_mrs_are_read_back_from_the_linearized_model_input():
    from lorakit.data.e2e import linearize_e2e, mr_of

    mr = "name[The Eagle], eatType[pub], priceRange[£20-25], customer rating[3 out of 5], familyFriendly[yes]"
    assert linearize_e2e(mr) != mr and mr_of(linearize_e2e(mr)) == mr and mr_of(mr) == mr


def test_the_repair_without_sacrebleu_is_refused_before_any_model_loads(monkeypatch):
    """The repair breaks ties by sentence BLEU: without the metrics extra it must fail first, not after decoding."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sacrebleu" else real(name, *a))
    with pytest.raises(ImportError, match=r"--rerank slots after greedy decoding or sampling needs the metrics extra"):
        _generate(["--task", "e2e", "--split", "dev", "--preset", "greedy", "--rerank", "slots"])
