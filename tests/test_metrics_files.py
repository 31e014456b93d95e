"""Text files read line by line (issue 11, item 9): lines end at ``\\n`` (or ``\\r\\n``) only, so a form feed or
U+2028 inside a line cannot shift every line after it, and bytes that are not UTF-8 are an error naming the
file and the line, in every reader of the package."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lorakit.data import DataFormatError
from lorakit.data.dart import read_dart_json
from lorakit.data.e2e import read_e2e_csv
from lorakit.data.glue import glue_spec, read_glue_tsv
from lorakit.decode.cli import read_prompts, read_sources
from lorakit.metrics.files import MetricsFileError, read_e2e_refs, read_hypotheses
from lorakit.nlu.cli import read_inputs

LATIN1 = "Caf\u00e9 Rouge is near the river.".encode("latin-1")  # b"\xe9": not UTF-8


def test_form_feed_and_a_missing_line_are_not_scored_shifted(tmp_path: Path) -> None:
    hyp = tmp_path / "hyp.txt"
    lines = [f"output {i}" for i in range(10)]
    lines[3] = "output 3\x0cwith a form feed"
    del lines[7]  # one line missing: with splitlines the form feed makes up the count
    hyp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(MetricsFileError, match=r"hyp\.txt: 9 hypothesis lines, but the references have 10 inputs"):
        read_hypotheses(hyp, expected=10)


def test_unicode_line_separators_stay_inside_their_line(tmp_path: Path) -> None:
    hyp, refs = tmp_path / "hyp.txt", tmp_path / "refs.txt"
    lines = [f"output {i}" for i in range(40)]
    lines[5] = "first half\u2028second half"
    lines[9] = "a\x1cb\x1dc\x1ed\x85e\x0bf"
    hyp.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))  # Windows line ends are fine
    read = read_hypotheses(hyp, expected=40)
    assert len(read) == 40 and read[5] == "first half\u2028second half" and read[39] == "output 39"
    refs.write_text("ref a\u2028still a\nref b\n\nref c\n", encoding="utf-8")
    assert read_e2e_refs(refs) == [["ref a\u2028still a", "ref b"], ["ref c"]]


@pytest.mark.parametrize("reader", [read_e2e_refs, read_hypotheses])
def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path: Path, reader) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"line one\nline two\n" + LATIN1 + b"\n")
    with pytest.raises(MetricsFileError, match=r"latin1\.txt: line 3: not UTF-8 text \(byte 0xe9 at column 4\)"):
        reader(path)
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(MetricsFileError, match=r"model\.bin: line 2: not UTF-8 text \(byte 0x80"):
        reader(binary)


def test_metrics_command_reports_bad_bytes_in_one_line(tmp_path: Path, capsys) -> None:
    from lorakit.cli import main

    refs, hyp = tmp_path / "refs.txt", tmp_path / "hyp.txt"
    refs.write_text("a\nb\n", encoding="utf-8")
    hyp.write_bytes(b"a\n" + LATIN1 + b"\n")
    assert main(["metrics", "e2e", "--refs", str(refs), "--hyp", str(hyp)]) == 2  # was a codec traceback
    assert f"{hyp}: line 2: not UTF-8 text" in capsys.readouterr().err


def _prompt_args(path: Path) -> argparse.Namespace:
    return argparse.Namespace(split=None, task=None, input=str(path), data=None, limit=None, raw=True)


def test_generate_input_lines(tmp_path: Path) -> None:
    path = tmp_path / "inputs.txt"
    path.write_text("name[A]\x0cnear[B]\r\nname[C]\u2028x\nname[D]\n", encoding="utf-8")
    args = _prompt_args(path)
    assert read_prompts(args, read_sources(args)) == ["name[A]\x0cnear[B]", "name[C]\u2028x", "name[D]"]
    path.write_bytes(b"name[A]\n" + LATIN1 + b"\n")
    with pytest.raises(DataFormatError, match=r"inputs\.txt, line 2: not UTF-8 text"):
        read_sources(_prompt_args(path))


def test_e2e_input_lines_in_mr_form_are_linearized_as_in_training(tmp_path: Path) -> None:
    """An --input line such as ``name[X], eatType[pub]`` reached the model as it was, a form it never saw in
    training (``name : X | Type : pub``); lines in the model's form and other text stay as they are."""
    path = tmp_path / "inputs.txt"
    path.write_text("name[Aromi], eatType[pub]\nname : Aromi | Type : pub\nsome other text\n", encoding="utf-8")
    args = argparse.Namespace(split=None, task="e2e", input=str(path), data=None, limit=None, raw=False)
    assert read_prompts(args, read_sources(args)) == ["name : Aromi | Type : pub\n"] * 2 + ["some other text\n"]


def test_predict_input_lines(tmp_path: Path) -> None:
    path = tmp_path / "sentences.txt"
    path.write_text("one\u2028sentence\r\ntwo\x0csentences\n", encoding="utf-8")
    assert [ex.text_a for ex in read_inputs(str(path))] == ["one\u2028sentence", "two\x0csentences"]
    path.write_bytes(b"fine\n" + LATIN1 + b"\n")
    with pytest.raises(DataFormatError, match=r"sentences\.txt, line 2: not UTF-8 text"):
        read_inputs(str(path))


def test_data_files_name_the_line_of_bad_bytes(tmp_path: Path) -> None:
    e2e = tmp_path / "e2e.csv"
    e2e.write_bytes(b'mr,ref\n"name[A]",A.\n"name[B]",' + LATIN1 + b"\n")
    with pytest.raises(DataFormatError, match=r"e2e\.csv, line 3: not UTF-8 text"):
        read_e2e_csv(e2e)
    dart = tmp_path / "dart.json"
    dart.write_bytes(b'[\n  {"tripleset": [["a", "b", "c"]],\n   "annotations": [{"text": "' + LATIN1 + b'"}]}\n]')
    with pytest.raises(DataFormatError, match=r"dart\.json, line 3: not UTF-8 text"):
        read_dart_json(dart)
    tsv = tmp_path / "train.tsv"
    tsv.write_bytes(b"sentence\tlabel\nfine\t1\n" + LATIN1 + b"\t0\n")
    with pytest.raises(DataFormatError, match=r"train\.tsv, line 3: not UTF-8 text"):
        read_glue_tsv(glue_spec("sst2"), tsv)
