"""Using a model trained on one's own data: ``lorakit evaluate PREDICTIONS --data FILE`` (BLEU, ROUGE-L, exact
match; accuracy, macro F1, Matthews) checked against hand-computed numbers, its errors, and ``lorakit predict
--data FILE`` with a tiny BERT classifier whose label names live in the adapter's ``labels.json``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import lorakit
from lorakit.cli import main as lorakit_main
from lorakit.lora import LoraConfig
from lorakit.metrics import classification_scores, read_label_names, text_scores
from lorakit.models import load_model, load_tokenizer


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def evaluate_json(capsys, *args: str) -> dict[str, float]:
    capsys.readouterr()
    assert lorakit_main(["evaluate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def evaluate_error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert lorakit_main(["evaluate", *args]) == 2
    return capsys.readouterr().err


# ROUGE-L (pycocoevalcap, beta = 1.2) of "the cat sat" against "the cat sat on the mat": LCS 3, P = 3/3, R = 3/6.
ROUGE_CAT = (1 + 1.2**2) * 1 * 0.5 / (0.5 + 1.2**2 * 1)


# ------------------------------------------------------------------------------------------ evaluate


def test_prompt_completion_scores_by_hand(tmp_path: Path, capsys) -> None:
    data = write_jsonl(tmp_path / "test.jsonl", [
        {"prompt": "p1", "completion": "the cat sat on the mat"},
        {"prompt": "p2", "completion": "Hello there."},
        {"prompt": "p3", "completion": "yes"},
    ])
    preds = write_lines(tmp_path / "preds.txt", ["the cat sat", "Hello   there.", "yes"])
    scores = evaluate_json(capsys, str(preds), "--data", str(data))
    assert list(scores) == ["BLEU", "ROUGE_L", "exact_match"]
    assert scores["exact_match"] == pytest.approx(200 / 3, abs=1e-4)  # whitespace collapsed: 2 of 3
    assert scores["ROUGE_L"] == pytest.approx(100 * (ROUGE_CAT + 1 + 1) / 3, abs=1e-4)
    # no output has a 4-gram: sacrebleu's corpus BLEU (no effective order) is 0
    assert scores["BLEU"] == 0


def test_bleu_by_hand_and_direction() -> None:
    # 1- to 4-gram precisions 4/5, 3/4, 2/3, 1/2 and equal lengths: BLEU = 0.2 ** (1/4)
    assert text_scores(["a b c d e"], ["a b c d f"])["BLEU"] == pytest.approx(100 * 0.2 ** 0.25, abs=1e-3)
    # a short output: every precision 1, brevity penalty exp(1 - 5/4); swapped arguments would give 80 ** ...
    assert text_scores(["a b c d"], ["a b c d e"])["BLEU"] == pytest.approx(100 * math.exp(1 - 5 / 4), abs=1e-3)


def test_messages_reference_is_last_assistant_turn(tmp_path: Path, capsys) -> None:
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a pet"}]
    data = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [*chat, {"role": "assistant", "content": "the cat sat on the mat"}]},
        {"messages": [*chat, {"role": "assistant", "content": "A dog."}]},
    ])
    preds = write_lines(tmp_path / "preds.txt", ["the cat sat", "A dog."])
    scores = evaluate_json(capsys, str(preds), "--data", str(data))
    assert scores["exact_match"] == 50.0
    assert scores["ROUGE_L"] == pytest.approx(100 * (ROUGE_CAT + 1) / 2, abs=1e-4)

    open_ended = write_jsonl(tmp_path / "open.jsonl", [{"messages": [*chat, {"role": "assistant", "content": "x"}]},
                                                        {"messages": chat}])
    err = evaluate_error(capsys, str(preds), "--data", str(open_ended))
    assert f"{open_ended}, line 2, key 'messages'" in err and "does not end with an assistant turn" in err


def test_columns_and_format_flags(tmp_path: Path, capsys) -> None:
    data = write_csv(tmp_path / "qa.csv", ["question", "answer"], [["q1", "four"], ["q2", "blue sky"]])
    preds = write_lines(tmp_path / "preds.txt", ["four", "grey sky"])
    scores = evaluate_json(capsys, str(preds), "--data", str(data), "--columns", "prompt=question,completion=answer")
    assert scores["exact_match"] == 50.0
    err = evaluate_error(capsys, str(preds), "--data", str(data))  # no known keys: the format cannot be told
    assert str(data) in err and "cannot tell the format" in err
    err = evaluate_error(capsys, str(preds), "--data", str(data), "--format", "classification",
                         "--columns", "text=question")
    assert "missing key" in err or "needs column 'label'" in err


def test_classification_names_and_ids_by_hand(tmp_path: Path, capsys) -> None:
    data = write_csv(tmp_path / "test.csv", ["text", "label"], [["a", "pos"], ["b", "neg"], ["c", "pos"], ["d", "neg"]])
    names = write_lines(tmp_path / "names.txt", ["pos", "pos", "pos", "neg"])
    scores = evaluate_json(capsys, str(names), "--data", str(data))
    # pos: P 2/3, R 1 -> F1 0.8; neg: P 1, R 1/2 -> F1 2/3. MCC (TP 2, TN 1, FP 1, FN 0) = 2 / sqrt(3*2*1*2)
    assert scores == pytest.approx({"accuracy": 75.0, "macro_f1": 100 * (0.8 + 2 / 3) / 2,
                                    "matthews": 100 * 2 / math.sqrt(12)}, abs=1e-4)

    ids = write_lines(tmp_path / "ids.txt", ["1", "1", "1", "0"])  # class ids in labels.json's order
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "labels.json").write_text(json.dumps(["neg", "pos"]))
    assert evaluate_json(capsys, str(ids), "--data", str(data), "--labels", str(tmp_path / "adapter")) == scores
    err = evaluate_error(capsys, str(ids), "--data", str(data))
    assert f"{ids}: line 1: prediction '1' is not a label of {data}" in err and "--labels" in err
    bad_id = write_lines(tmp_path / "bad_id.txt", ["1", "1", "2", "0"])
    assert "line 3: class id 2 is out of range" in evaluate_error(capsys, str(bad_id), "--data", str(data),
                                                                   "--labels", str(tmp_path / "adapter"))

    typo = write_lines(tmp_path / "typo.txt", ["pos", "ngeative", "pos", "neg"])
    capsys.readouterr()
    assert lorakit_main(["evaluate", str(typo), "--data", str(data), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["accuracy"] == 75.0  # the unknown label is simply wrong
    assert "1 prediction(s) are not labels" in captured.err and "line 2, 'ngeative'" in captured.err


def test_integer_labels_are_their_own_names(tmp_path: Path, capsys) -> None:
    data = write_jsonl(tmp_path / "test.jsonl", [{"text": t, "label": y} for t, y in
                                                 [("a", 0), ("b", 2), ("c", 1), ("d", 2), ("e", 0)]])
    preds = write_lines(tmp_path / "preds.txt", ["0", "2", "2", "2", "1"])  # 3 of 5
    scores = evaluate_json(capsys, str(preds), "--data", str(data))
    assert scores["accuracy"] == 60.0
    # per class F1: 0 -> P 1, R 1/2 = 2/3; 1 -> P 0 = 0; 2 -> P 2/3, R 1 = 0.8
    assert scores["macro_f1"] == pytest.approx(100 * (2 / 3 + 0 + 0.8) / 3, abs=1e-4)


def test_regression_labels(tmp_path: Path, capsys) -> None:
    data = write_jsonl(tmp_path / "test.jsonl", [{"text": t, "label": y} for t, y in [("a", 0.5), ("b", 1.5),
                                                                                      ("c", 3.0)]])
    preds = write_lines(tmp_path / "preds.txt", ["1.0", "2.0", "3.5"])  # a shift: perfect correlation
    assert evaluate_json(capsys, str(preds), "--data", str(data)) == pytest.approx({"pearson": 100.0,
                                                                                    "spearman": 100.0})
    bad = write_lines(tmp_path / "bad.txt", ["1.0", "high", "3.5"])
    assert f"{bad}: line 2: 'high' is not a number" in evaluate_error(capsys, str(bad), "--data", str(data))


def test_evaluate_errors_name_files_and_counts(tmp_path: Path, capsys) -> None:
    data = write_jsonl(tmp_path / "test.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)])
    short = write_lines(tmp_path / "short.txt", ["c0", "c1"])
    err = evaluate_error(capsys, str(short), "--data", str(data))
    assert f"{short}: 2 hypothesis lines, but {data} has 3 inputs" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert f"{empty}: hypotheses file is empty (expected 3 lines, one per input of {data})" in \
        evaluate_error(capsys, str(empty), "--data", str(data))
    no_data = tmp_path / "none.jsonl"
    no_data.write_text("\n")
    assert f"{no_data}: no examples" in evaluate_error(capsys, str(short), "--data", str(no_data))
    text_only = write_jsonl(tmp_path / "lm.jsonl", [{"text": "a"}, {"text": "b"}])
    assert "format text has no references" in evaluate_error(capsys, str(short), "--data", str(text_only))
    assert "give --data FILE" in evaluate_error(capsys, str(short))
    assert "--columns apply to your own --data file" in evaluate_error(capsys, str(short), "--task", "e2e",
                                                                        "--columns", "prompt=q")
    assert f"(--labels) apply to classification files; {data} is prompt-completion" in \
        evaluate_error(capsys, str(short), "--data", str(data), "--labels", str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": ""}\n')
    assert f"{bad}, line 2, key 'completion': empty completion" in evaluate_error(capsys, str(short), "--data",
                                                                                   str(bad))


def test_classification_scores_and_label_files(tmp_path: Path) -> None:
    assert classification_scores(["a", "b"], ["a", "b"]) == {"accuracy": 100.0, "macro_f1": 100.0, "matthews": 100.0}
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        classification_scores(["a", "b", "c"], ["a", "b"])
    (tmp_path / "labels.json").write_text(json.dumps({"id2label": {"1": "pos", "0": "neg"}}))
    assert read_label_names(tmp_path) == ["neg", "pos"]
    for bad, message in ((["a", "a"], "appears twice"), ([], "non-empty JSON list"), ({"0": "a", "2": "b"},
                                                                                      "class ids must be 0..1")):
        (tmp_path / "labels.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            read_label_names(tmp_path)
    assert read_label_names(tmp_path / "elsewhere", required=False) is None


# ------------------------------------------------------------------------------------------- predict

NAMES = ["positive", "negative", "neutral"]  # not sorted: a sorted name order would show
TEXTS = ["the film was great .", "a dull , poor film", "it was fine", "superb acting", "awful and bad",
         "an okay evening", "lovely", "what a waste of time"]


def spread_head(model: torch.nn.Module, tok, seed: int) -> torch.Tensor:
    """Give the adapter's head (its ``modules_to_save`` copy) random directions across the pooled features of
    TEXTS, centred on their mean: a tiny random BERT pools almost the same vector for every input, so a plain
    random head would give every text one class and a wrong name order could not show. Returns the logits."""
    pooled = []
    head = model.classifier.modules_to_save["default"]
    hook = head.register_forward_hook(lambda module, args, out: pooled.append(args[0]))
    with torch.no_grad():
        for text in TEXTS:
            model(**tok(text, return_tensors="pt"))
        hook.remove()
        features = torch.cat(pooled)
        spread = (features - features.mean(0)).std(0).clamp_min(1e-8)
        weight = torch.randn(len(NAMES), features.shape[1], generator=torch.Generator().manual_seed(seed)) / spread
        head.weight.copy_(weight / features.shape[1] ** 0.5)
        head.bias.copy_(-head.weight @ features.mean(0))
        return torch.cat([model(**tok(text, return_tensors="pt")).logits for text in TEXTS])


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A 2-layer BERT base (2-output head) and a LoRA adapter whose saved head has 3 outputs, named in
    ``labels.json``; plus the label each of TEXTS gets from the in-memory adapted model (the expectation)."""
    root = tmp_path_factory.mktemp("user-classifier")
    base = root / "base"
    tokenizer = load_tokenizer("minilm-l6")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    model, tok = load_model(str(base), "sequence-classification", num_labels=3)
    lorakit.add_adapter(model, LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"],
                                          init_lora_weights=False))
    model.eval()
    for seed in range(20):  # every class predicted, each by a clear margin (padding changes logits by ~1e-6)
        logits = spread_head(model, tok, seed)
        top2 = logits.topk(2, dim=-1).values
        if len(set(logits.argmax(-1).tolist())) == len(NAMES) and (top2[:, 0] - top2[:, 1]).min() > 0.05:
            break
    else:
        pytest.fail("no seed spreads the tiny classifier's outputs")
    expected = [NAMES[i] for i in logits.argmax(-1).tolist()]
    adapter = lorakit.save_adapter(model, root / "adapter")
    (adapter / "labels.json").write_text(json.dumps(NAMES))
    return base, adapter, expected


def test_predict_user_file_writes_label_names_and_accuracy(tmp_path: Path, classifier, capsys) -> None:
    base, adapter, expected = classifier
    gold = [*expected[:-2], *(NAMES[(NAMES.index(e) + 1) % 3] for e in expected[-2:])]  # the last two wrong
    data = write_csv(tmp_path / "texts.csv", ["sentence", "sentiment"], list(zip(TEXTS, gold, strict=True)))
    out = tmp_path / "preds.txt"
    capsys.readouterr()
    assert lorakit_main(["predict", "--model", str(base), "--adapter", str(adapter), "--data", str(data),
                         "--columns", "text=sentence,label=sentiment", "--output", str(out)]) == 0
    assert out.read_text().splitlines() == expected
    scores = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert scores["accuracy"] == pytest.approx(100 * 6 / 8)

    # the predictions file scores the same through `lorakit evaluate`
    assert evaluate_json(capsys, str(out), "--data", str(data), "--columns",
                         "text=sentence,label=sentiment")["accuracy"] == pytest.approx(75.0)


def test_predict_without_labels_prints_names_beside_inputs(tmp_path: Path, classifier, capsys) -> None:
    base, adapter, expected = classifier
    data = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in TEXTS])  # no label column: nothing scored
    capsys.readouterr()
    assert lorakit_main(["predict", "--model", str(base), "--adapter", str(adapter), "--data", str(data)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{e}\t{t}" for e, t in zip(expected, TEXTS, strict=True)]
    assert "accuracy" not in captured.err


def test_predict_without_labels_json_gives_class_ids(tmp_path: Path, classifier, capsys) -> None:
    base, adapter, expected = classifier
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (bare / name).write_bytes((adapter / name).read_bytes())
    capsys.readouterr()
    assert lorakit_main(["predict", "--model", str(base), "--adapter", str(bare), "--text", *TEXTS[:3]]) == 0
    captured = capsys.readouterr()  # the base's 2-output head took the file's 3 outputs
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(NAMES.index(e)) for e in expected[:3]]
    assert "no labels.json" in captured.err


def test_predict_errors(tmp_path: Path, classifier, capsys) -> None:
    base, adapter, _ = classifier
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (wrong / name).write_bytes((adapter / name).read_bytes())
    (wrong / "labels.json").write_text(json.dumps(["a", "b"]))
    capsys.readouterr()
    assert lorakit_main(["predict", "--model", str(base), "--adapter", str(wrong), "--text", "hi"]) == 2
    assert "2 label names (a, b) for a classifier with 3 outputs" in capsys.readouterr().err
    data = write_csv(tmp_path / "t.csv", ["text", "label"], [["hi", "negative"]])
    assert lorakit_main(["predict", "--model", str(base), "--adapter", str(adapter), "--data", str(data),
                         "--text", "hi"]) == 2
    assert "give one of --data FILE" in capsys.readouterr().err
    missing = write_csv(tmp_path / "m.csv", ["sentence"], [["hi"]])
    assert lorakit_main(["predict", "--model", str(base), "--adapter", str(adapter), "--data", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_predict_max_length_beyond_the_model_is_named(tmp_path: Path, classifier, capsys) -> None:
    """A --max-length past the model's positions ended in a tensor size mismatch deep in the forward pass."""
    base, adapter, _ = classifier
    capsys.readouterr()
    assert lorakit_main(["predict", "--model", str(base), "--adapter", str(adapter), "--text", "hi " * 300,
                         "--max-length", "1000"]) == 2
    assert "--max-length 1000 is beyond the model's" in capsys.readouterr().err
