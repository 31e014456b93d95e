"""``lorakit generate --data FILE``: a user's prompts or conversations, one output line per row in file order,
equal to greedy decoding through the Python API (``lorakit.decode.generate``) of the same rendered prompts.

A small random Llama (GPT-2's vocabulary plus ``<|im_start|>``/``<|im_end|>``) is saved as a model folder with
the GPT-2 tokenizer and a ChatML template; its output layer is arranged (as in ``test_serve_chat``) so that
the greedy answer to the first conversation writes ``<|im_end|>`` after a few tokens, where a conversation
must stop. A second folder holds the same model with no chat template, for ``--chat-template FILE``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_serve_api import EOS, tiny_llama
from test_serve_chat import CHATML, IM_END, PLAIN, chat_tokenizer, end_turn_at_step

from lorakit.cli import main as lorakit_main
from lorakit.data.chat import render_generation_prompt
from lorakit.decode import DecodeConfig, generate
from lorakit.models import load_model

MAX = 8
PROMPTS = ["Hello world", "name : Eagle | food : Chinese\n", "The cat sat on"]
CONVERSATIONS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "How are you?"}],
    # a test file's reference answer: generation continues the conversation before it
    [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}],
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("generate-data")
    model = tiny_llama()
    model.resize_token_embeddings(IM_END + 1, mean_resizing=False)
    tokenizer = chat_tokenizer()
    first = tokenizer(render_generation_prompt(tokenizer, CONVERSATIONS[0]), add_special_tokens=False)["input_ids"]
    k = end_turn_at_step(model, first)
    for name, template in (("base", CHATML), ("plain", None)):
        model.save_pretrained(tmp / name)
        chat_tokenizer(template).save_pretrained(tmp / name)
    (tmp / "chatml.jinja").write_text(CHATML, encoding="utf-8")
    return {"tmp": tmp, "k": k}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run(world: dict[str, Any], data: Path, *flags: str, model: str = "base") -> list[str]:
    output = data.with_suffix(".out.txt")
    code = lorakit_main(["generate", "--model", str(world["tmp"] / model), "--data", str(data), "--output",
                         str(output), "--max-new-tokens", str(MAX), "--batch-size", "2", "--device", "cpu",
                         "--no-progress", *flags])
    assert code == 0
    return output.read_text(encoding="utf-8").splitlines()


def api_lines(world: dict[str, Any], prompts: list[str], stop_at: list[int] | None = None) -> list[str]:
    """Greedy decoding through the Python API, written as the command line writes it (one line each)."""
    model, tokenizer = load_model(str(world["tmp"] / "base"), padding_side="left")
    if stop_at is not None:
        model.generation_config.eos_token_id = stop_at
    texts = generate(model, tokenizer, prompts, DecodeConfig(max_new_tokens=MAX), batch_size=2, progress=False)
    return [" ".join(t.split()) for t in texts]


def rendered(conversations: list[list[dict[str, str]]]) -> list[str]:
    tokenizer = chat_tokenizer()
    return [render_generation_prompt(tokenizer, c[:-1] if c[-1]["role"] == "assistant" else c) for c in conversations]


def test_prompts_from_jsonl_csv_and_parquet_in_file_order(world) -> None:
    tmp = world["tmp"]
    expected = api_lines(world, PROMPTS)
    assert len(set(expected)) == len(PROMPTS)
    jsonl = write_jsonl(tmp / "prompts.jsonl", [{"prompt": p, **({"completion": "ref"} if i == 1 else {})}
                                                for i, p in enumerate(PROMPTS)])
    assert run(world, jsonl) == expected
    with (tmp / "prompts.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "question"])
        writer.writerows([i, p] for i, p in enumerate(PROMPTS))
    assert run(world, tmp / "prompts.csv", "--columns", "prompt=question") == expected
    pq.write_table(pa.table({"prompt": PROMPTS}), tmp / "prompts.parquet")
    assert run(world, tmp / "prompts.parquet") == expected
    assert run(world, jsonl, "--limit", "2") == expected[:2]


def test_conversations_render_with_the_template_and_stop_at_end_of_turn(world) -> None:
    data = write_jsonl(world["tmp"] / "chats.jsonl", [{"messages": c} for c in CONVERSATIONS])
    prompts = rendered(CONVERSATIONS)
    assert prompts[2].endswith("<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n")
    expected = api_lines(world, prompts, stop_at=[EOS, IM_END])
    lines = run(world, data)
    assert lines == expected
    # the first conversation's answer ends at <|im_end|>, k tokens in; without that stop it would go on
    unstopped = api_lines(world, prompts[:1])
    assert lines[0] != unstopped[0] and unstopped[0].startswith(lines[0])
    tokenizer = chat_tokenizer()
    assert len(tokenizer(lines[0], add_special_tokens=False)["input_ids"]) <= world["k"] < MAX


def test_chat_template_file_for_a_base_without_one(world, capsys) -> None:
    data = write_jsonl(world["tmp"] / "chats2.jsonl", [{"messages": c} for c in CONVERSATIONS])
    expected = run(world, data)
    assert run(world, data, "--chat-template", str(world["tmp"] / "chatml.jinja"), model="plain") == expected
    capsys.readouterr()
    output = world["tmp"] / "never.txt"
    code = lorakit_main(["generate", "--model", str(world["tmp"] / "plain"), "--data", str(data), "--output",
                         str(output), "--device", "cpu", "--no-progress"])
    assert code == 2 and not output.exists()
    assert "--chat-template" in capsys.readouterr().err


def test_an_adapters_saved_chat_template_is_used(world, capsys) -> None:
    """``lorakit train --chat-template`` saves the template beside the adapter; generate renders with it."""
    import lorakit

    tmp = world["tmp"]
    data = write_jsonl(tmp / "chats3.jsonl", [{"messages": c} for c in CONVERSATIONS])
    expected = run(world, data)
    model, _ = load_model(str(tmp / "plain"))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]), "chat")  # B = 0: no change
    for name, template in (("chatml-adapter", CHATML), ("plain-adapter", PLAIN)):
        lorakit.save_adapter(model, tmp / name, "chat")
        (tmp / name / "chat_template.jinja").write_text(template, encoding="utf-8")
    assert run(world, data, "--adapter", str(tmp / "chatml-adapter"), model="plain") == expected
    assert "chat_template.jinja" in capsys.readouterr().err
    err = failure(world, capsys, "--data", str(data), "--adapter", str(tmp / "chatml-adapter"), "--adapter",
                  str(tmp / "plain-adapter"), "--no-merge")
    assert "different chat templates" in err and "--chat-template" in err


def failure(world: dict[str, Any], capsys, *args: str) -> str:
    capsys.readouterr()
    output = world["tmp"] / "failed.txt"
    code = lorakit_main(["generate", "--model", str(world["tmp"] / "base"), "--output", str(output),
                         "--device", "cpu", "--no-progress", *args])
    assert code == 2 and not output.exists()
    return capsys.readouterr().err


def test_errors_name_the_file_line_and_key(world, capsys) -> None:
    tmp = world["tmp"]
    robot = write_jsonl(tmp / "robot.jsonl", [{"messages": CONVERSATIONS[0]},
                                              {"messages": [{"role": "robot", "content": "hi"}]}])
    err = failure(world, capsys, "--data", str(robot))
    assert "robot.jsonl" in err and "line 2" in err and "messages[0].role" in err
    reply_only = write_jsonl(tmp / "reply.jsonl", [{"messages": [{"role": "assistant", "content": "hi"}]}])
    err = failure(world, capsys, "--data", str(reply_only))
    assert "reply.jsonl" in err and "line 1" in err and "empty conversation" in err
    numbers = write_jsonl(tmp / "numbers.jsonl", [{"prompt": "fine"}, {"prompt": "fine"}, {"prompt": 3}])
    err = failure(world, capsys, "--data", str(numbers))
    assert "numbers.jsonl" in err and "line 3" in err and "'prompt'" in err
    (tmp / "template.jinja").write_text(PLAIN, encoding="utf-8")  # refuses system turns
    chats = write_jsonl(tmp / "system.jsonl", [{"messages": CONVERSATIONS[1]}, {"messages": CONVERSATIONS[0]}])
    err = failure(world, capsys, "--data", str(chats), "--chat-template", str(tmp / "template.jinja"))
    assert "system.jsonl" in err and "line 2" in err and "this template takes no system turn" in err
    texts = write_jsonl(tmp / "texts.jsonl", [{"text": "a plain text"}])
    assert "prompt column" in failure(world, capsys, "--data", str(texts))


def test_flags_that_do_not_go_with_a_data_file(world, capsys) -> None:
    data = write_jsonl(world["tmp"] / "ok.jsonl", [{"prompt": "hi"}])
    assert "--task applies to --split" in failure(world, capsys, "--data", str(data), "--task", "e2e")
    assert "two sources" in failure(world, capsys, "--data", str(data), "--input", str(data))
    assert "apply to your own --data" in failure(world, capsys, "--input", str(data), "--chat-template", "x.jinja")
    assert "give --data FILE" in failure(world, capsys)
