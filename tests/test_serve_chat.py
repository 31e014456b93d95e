"""``/v1/chat/completions`` over real HTTP on 127.0.0.1, called with the official ``openai`` client and httpx.

A small random Llama with GPT-2's vocabulary plus ``<|im_start|>``/``<|im_end|>`` and a ChatML template.
Two rows of its output layer are swapped so that its greedy answer to ``MESSAGES`` writes ``<|im_end|>``
after a few tokens: stopping at the template's end-of-turn token is checked, not only stopping at the limit.
References come from lorakit's own decoding of the conversation rendered by ``lorakit.data.chat``, computed
before the server owns the model; a second server has no chat template, a third gets one with
``serve_in_thread(chat_template=...)`` (what ``lorakit serve --chat-template`` passes).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import openai
import pytest
import torch
from test_serve_api import EOS, _configs, tiny_llama
from test_serve_http_hardening import _error, _post

import lorakit
from lorakit.data.chat import end_of_turn_id, render_generation_prompt
from lorakit.decode.api import eos_ids, generate_ids
from lorakit.decode.config import DecodeConfig
from lorakit.models import ModelNotFoundError, gpt2_tokenizer, load_model
from lorakit.serve.chat import ChatPrompts
from lorakit.serve.server import build_engine, serve_in_thread

BASE = "tiny-chat"
IM_END = 50258
MAX = 10
API_KEY = "chat-key"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# a template without special tokens (turns end in plain text) that refuses system turns
PLAIN = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('this template takes no system turn') }}"
         "{% endif %}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
         "{% if add_generation_prompt %}assistant:{% endif %}")
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]


def chat_tokenizer(template: str | None = CHATML):
    tokenizer = gpt2_tokenizer(padding_side="left")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = template
    return tokenizer


def greedy(model: torch.nn.Module, ids: list[int], eos: list[int], max_new_tokens: int = MAX) -> list[int]:
    return generate_ids(model, [ids], DecodeConfig(max_new_tokens=max_new_tokens), eos_token_id=eos,
                        pad_token_id=EOS)[0]


def end_turn_at_step(model: torch.nn.Module, ids: list[int]) -> int:
    """Swap the output rows of ``<|im_end|>`` and of the token greedy decoding writes at some step k >= 2
    (one not written before): the greedy answer is then the same k tokens, followed by ``<|im_end|>``."""
    free = greedy(model, ids, [EOS])
    k = next(k for k in range(2, len(free)) if free[k] not in free[:k] and IM_END not in free[:k + 1])
    with torch.no_grad():
        weight = model.lm_head.weight
        weight[[free[k], IM_END]] = weight[[IM_END, free[k]]]
    assert greedy(model, ids, [EOS, IM_END]) == free[:k]
    return k


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Any:
    torch.manual_seed(0)
    model = tiny_llama()
    model.resize_token_embeddings(IM_END + 1, mean_resizing=False)
    tokenizer = chat_tokenizer()
    prompt = render_generation_prompt(tokenizer, MESSAGES)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    k = end_turn_at_step(model, ids)
    plain_model = copy.deepcopy(model)  # for the servers without a template of their own
    root = tmp_path_factory.mktemp("adapters")
    lorakit.add_adapter(model, _configs()["qv4"], "qv4")
    lorakit.save_adapter(model, root / "qv4", "qv4")
    refs = {}
    for name in (None, "qv4"):
        lorakit.set_active_adapters(model, [name] if name else [])
        refs[name] = tokenizer.decode(greedy(model, ids, [EOS, IM_END]), skip_special_tokens=True)
    lorakit.delete_adapter(model, "qv4")
    server = serve_in_thread(build_engine(model, tokenizer, root, max_batch=8), BASE)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    yield {"server": server, "client": client, "refs": refs, "prompt": prompt, "ids": ids, "k": k,
           "plain": plain_model, "root": root, "tokenizer": tokenizer}
    server.stop()


def chat(client: openai.OpenAI, model: str = BASE, messages: list | None = None, **kw: Any):
    kw.setdefault("max_tokens", MAX)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=messages or MESSAGES, **kw)


def test_the_template_ends_turns_with_im_end_which_is_not_eos(world) -> None:
    tokenizer = world["tokenizer"]
    assert end_of_turn_id(tokenizer) == IM_END
    assert ChatPrompts(tokenizer, None, {EOS}).stop_ids == frozenset({IM_END})
    assert ChatPrompts(tokenizer, PLAIN, {EOS}).stop_ids == frozenset()  # turns that end in plain text
    assert world["prompt"].endswith("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")


def test_a_template_that_is_not_jinja_or_a_missing_file_fails_at_start_up(world, tmp_path) -> None:
    with pytest.raises(ValueError, match="not valid Jinja"):
        ChatPrompts(chat_tokenizer(None), "{% for m in messages %}{{ m.content }", {EOS})
    with pytest.raises(FileNotFoundError, match=r"missing\.jinja"):
        ChatPrompts(chat_tokenizer(None), str(tmp_path / "missing.jinja"), {EOS})


def test_greedy_chat_stops_at_end_of_turn_and_equals_completions_of_the_rendered_prompt(world) -> None:
    reply = chat(world["client"])
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == world["refs"][None]
    assert choice.finish_reason == "stop"  # at <|im_end|>, before max_tokens
    assert reply.usage.completion_tokens == world["k"] < MAX
    assert reply.usage.prompt_tokens == len(world["ids"])
    assert reply.usage.total_tokens == len(world["ids"]) + world["k"]
    # the same engine path: /v1/completions of the rendered prompt writes the same tokens (it does not stop
    # at <|im_end|>, so it is asked for exactly those k)
    text = world["client"].completions.create(model=BASE, prompt=world["prompt"], max_tokens=world["k"],
                                              temperature=0)
    assert text.choices[0].text == choice.message.content and text.choices[0].finish_reason == "length"


def test_adapter_is_chosen_by_model(world) -> None:
    refs = world["refs"]
    assert refs["qv4"] != refs[None]
    assert chat(world["client"], "qv4").choices[0].message.content == refs["qv4"]
    assert chat(world["client"]).choices[0].message.content == refs[None]
    with pytest.raises(openai.NotFoundError, match="no adapter named 'nope'"):
        chat(world["client"], "nope")


def test_streaming_with_the_openai_client(world) -> None:
    chunks = list(chat(world["client"], stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == world["refs"][None]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == world["k"]


def test_raw_stream_with_n_choices_is_openai_sse(world) -> None:
    body = {"model": "qv4", "messages": MESSAGES, "max_tokens": 4, "n": 2, "temperature": 0, "stream": True}
    with httpx.stream("POST", world["server"].url + "/v1/chat/completions", json=body, timeout=30) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert [e["choices"][0]["delta"] for e in events[:2]] == [{"role": "assistant", "content": ""}] * 2
    texts = {0: "", 1: ""}
    for event in events:
        choice = event["choices"][0]
        texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts[0] == texts[1] == world["refs"]["qv4"][:len(texts[0])] and texts[0]
    ends = [e["choices"][0] for e in events if e["choices"][0]["finish_reason"]]
    assert sorted(c["index"] for c in ends) == [0, 1] and all(c["delta"] == {} for c in ends)


def test_n_seed_and_stop(world) -> None:
    client, prompt = world["client"], world["prompt"]
    sampled = {"temperature": 1.0, "top_p": 0.9, "n": 3, "seed": 7, "max_tokens": 6}
    a, b = chat(client, "qv4", **sampled), chat(client, "qv4", **sampled)
    texts = [c.message.content for c in sorted(a.choices, key=lambda c: c.index)]
    assert texts == [c.message.content for c in sorted(b.choices, key=lambda c: c.index)]
    assert sorted(c.index for c in a.choices) == [0, 1, 2] and len(set(texts)) > 1
    assert a.usage.prompt_tokens == 3 * len(world["ids"])
    # the same rows as /v1/completions with the rendered prompt (which goes on where a chat turn ends)
    plain = client.completions.create(model="qv4", prompt=prompt, **sampled)
    for chat_choice, text in zip(sorted(a.choices, key=lambda c: c.index),
                                 [c.text for c in sorted(plain.choices, key=lambda c: c.index)], strict=True):
        assert text.startswith(chat_choice.message.content)
        if chat_choice.finish_reason == "length":
            assert text == chat_choice.message.content
    full = world["refs"][None]
    stop = full[len(full) // 2:len(full) // 2 + 2]
    reply = chat(client, stop=[stop])
    assert reply.choices[0].message.content == full[:full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_token_limits_and_context(world) -> None:
    reply = chat(world["client"], max_completion_tokens=2, max_tokens=None)
    assert reply.usage.completion_tokens == 2 and reply.choices[0].finish_reason == "length"
    reply = chat(world["client"], "qv4", max_tokens=None)  # no limit given: what the context (64) leaves
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens <= 64
    r = _post(world["server"], "/v1/chat/completions",
              {"model": BASE, "messages": [{"role": "user", "content": "word " * 80}]})
    error = _error(r, 400)
    assert error["param"] == "messages" and error["code"] == "context_length_exceeded"


USER = {"role": "user", "content": "hi"}
MALFORMED = [
    ("hi", "messages", "expected a list"),
    ([], "messages", "empty conversation"),
    (["hi"], "messages[0]", "expected an object"),
    ([{"content": "hi"}], "messages[0].role", "missing"),
    ([{"role": "user"}], "messages[0].content", "missing"),
    ([{"role": "robot", "content": "hi"}], "messages[0].role", "'robot' is not one of system, user, assistant"),
    ([USER, {"role": 3, "content": "hi"}, USER], "messages[1].role", "is not one of"),
    ([{"role": "user", "content": 5}], "messages[0].content", "must be a string, got int"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "messages[0].content", "got list"),
    ([{"role": "user", "content": None}], "messages[0].content", "got null"),
    ([USER, {"role": "assistant", "content": " "}, USER], "messages[1].content", "empty assistant content"),
    ([USER, {"role": "assistant", "content": "hello"}], "messages[1].role", "must end with a user turn"),
    ([{"role": "system", "content": "be nice"}], "messages[0].role", "must end with a user turn"),
]


@pytest.mark.parametrize(("messages", "param", "message"), MALFORMED)
def test_malformed_messages_are_422_naming_the_field(world, messages: Any, param: str, message: str) -> None:
    error = _error(_post(world["server"], "/v1/chat/completions", {"model": BASE, "messages": messages}), 422)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"{param}: ") and message in error["message"]


def test_other_bad_chat_requests(world) -> None:
    server = world["server"]
    error = _error(_post(server, "/v1/chat/completions", {"model": BASE}), 422)
    assert error["param"] == "messages" and "required" in error["message"].lower()
    with pytest.raises(openai.UnprocessableEntityError, match=r"messages\[0\]\.role"):
        chat(world["client"], messages=[{"role": "robot", "content": "hi"}])
    for field, value in (("logprobs", True), ("top_logprobs", 2), ("presence_penalty", 1.0), ("tools", [])):
        error = _error(_post(server, "/v1/chat/completions", {"model": BASE, "messages": [USER], field: value}), 422)
        assert field in error["message"]
    error = _error(_post(server, "/v1/chat/completions", {"model": BASE, "messages": [USER], "temperature": 9}), 422)
    assert error["param"] == "temperature"
    lone = _post(server, "/v1/chat/completions", '{"model": "tiny-chat", "messages": '
                                                 '[{"role": "user", "content": "\\ud800"}]}')
    assert "invalid unicode" in _error(lone, 422)["message"]


def test_metrics_count_chat_requests(world) -> None:
    chat(world["client"], max_tokens=1)
    text = httpx.get(world["server"].url + "/metrics").text
    assert 'lorakit_requests_total{endpoint="/v1/chat/completions",status="200"}' in text


@pytest.fixture(scope="module")
def bare(world):
    """A base whose tokenizer has no chat template, served without one."""
    running = serve_in_thread(build_engine(copy.deepcopy(world["plain"]), chat_tokenizer(None), world["root"]),
                              BASE)
    yield running
    running.stop()


def test_a_base_without_a_template_says_so(bare) -> None:
    error = _error(_post(bare, "/v1/chat/completions", {"model": BASE, "messages": [USER]}), 400)
    assert error["code"] == "no_chat_template" and "--chat-template" in error["message"]
    r = _post(bare, "/v1/completions", {"model": BASE, "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200  # the rest of the server works


@pytest.fixture(scope="module")
def overridden(world, tmp_path_factory):
    """The same bare base, started with a template file (``lorakit serve --chat-template FILE``) and a key."""
    path = tmp_path_factory.mktemp("template") / "plain.jinja"
    path.write_text(PLAIN, encoding="utf-8")
    tokenizer = chat_tokenizer(None)
    messages = [{"role": "user", "content": "Name a colour."}]
    ids = tokenizer(render_generation_prompt(tokenizer, messages, chat_template=str(path)),
                    add_special_tokens=False)["input_ids"]
    ref = tokenizer.decode(greedy(world["plain"], ids, [EOS]), skip_special_tokens=True)
    engine = build_engine(copy.deepcopy(world["plain"]), tokenizer, world["root"])
    running = serve_in_thread(engine, BASE, api_key=API_KEY, chat_template=str(path))
    yield running, messages, ref
    running.stop()


def test_chat_template_option_and_api_key(overridden) -> None:
    server, messages, ref = overridden
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
    reply = chat(client, messages=messages)
    assert reply.choices[0].message.content == ref
    assert reply.choices[0].finish_reason == "length"  # no end-of-turn token: only EOS or the limit end it
    with pytest.raises(openai.AuthenticationError):
        chat(openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0), messages=messages)
    error = _error(_post(server, "/v1/chat/completions", {"model": BASE, "messages": MESSAGES}, API_KEY), 422)
    assert error["param"] == "messages" and "this template takes no system turn" in error["message"]


@pytest.fixture(scope="module")
def templated(world, tmp_path_factory):
    """A bare base serving an adapter trained with ``--chat-template`` (its ``chat_template.jinja`` beside it),
    plus adapters whose template file is hostile or broken."""
    root = tmp_path_factory.mktemp("templated")
    model = copy.deepcopy(world["plain"])
    lorakit.add_adapter(model, _configs()["qv4"], "own")
    tokenizer = chat_tokenizer(None)
    messages = [{"role": "user", "content": "Name a colour."}]
    ids = tokenizer(render_generation_prompt(tokenizer, messages, chat_template=PLAIN),
                    add_special_tokens=False)["input_ids"]
    ref = tokenizer.decode(greedy(model, ids, [EOS]), skip_special_tokens=True)
    for name, template in (("own", PLAIN), ("path", str(root / "own" / "chat_template.jinja")),
                           ("broken", "{% for m in messages %}"), ("escape", None), ("huge", None),
                           ("latin1", None)):
        lorakit.save_adapter(model, root / name, "own")
        if template is not None:
            (root / name / "chat_template.jinja").write_text(template, encoding="utf-8")
    (root / "huge" / "chat_template.jinja").write_text(PLAIN + " " * (1 << 20), encoding="utf-8")
    (root / "latin1" / "chat_template.jinja").write_bytes(PLAIN.replace("assistant:", "caf\xe9:").encode("latin-1"))
    outside = tmp_path_factory.mktemp("outside") / "t.jinja"
    outside.write_text(PLAIN, encoding="utf-8")
    (root / "escape" / "chat_template.jinja").symlink_to(outside)
    lorakit.delete_adapter(model, "own")
    running = serve_in_thread(build_engine(model, tokenizer, root), BASE)
    yield running, messages, ref, root
    running.stop()


def test_an_adapter_is_served_with_the_chat_template_it_was_trained_with(templated) -> None:
    server, messages, ref, root = templated
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert chat(client, "own", messages=messages).choices[0].message.content == ref
    error = _error(_post(server, "/v1/chat/completions", {"model": BASE, "messages": messages}), 400)
    assert error["code"] == "no_chat_template"  # the base still has none
    error = _error(_post(server, "/v1/chat/completions", {"model": "own", "messages": MESSAGES}), 422)
    assert "this template takes no system turn" in error["message"]  # PLAIN's own refusal: PLAIN rendered it
    for name, says in (("path", "not a chat template"), ("broken", "not valid Jinja"),
                       ("escape", "symlink that leaves the adapter folder"), ("huge", "larger than 1048576 bytes"),
                       ("latin1", "not UTF-8")):
        error = _error(_post(server, "/v1/chat/completions", {"model": name, "messages": messages}), 400)
        assert error["param"] == "model" and says in error["message"], error
        assert "chat_template.jinja" in error["message"] and str(root) not in error["message"], error
    # a file that cannot be a template fails that adapter's chat requests only; a symlink out of the adapter
    # folder refuses the adapter, as for any of its files
    assert _post(server, "/v1/completions", {"model": "broken", "prompt": "hi", "max_tokens": 2}).status_code == 200
    assert _post(server, "/v1/completions", {"model": "escape", "prompt": "hi", "max_tokens": 2}).status_code == 400
    # read at the adapter's first chat request and kept until it is unloaded, as its weights are
    (root / "own" / "chat_template.jinja").write_text("{{ raise_exception('the new template') }}", encoding="utf-8")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert chat(client, "own", messages=messages).choices[0].message.content == ref
    assert _post(server, "/v1/adapters/unload", {"name": "own"}).status_code == 200
    error = _error(_post(server, "/v1/chat/completions", {"model": "own", "messages": messages}), 422)
    assert "the new template" in error["message"]


def test_serve_cli_has_chat_template() -> None:
    from lorakit.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "smollm2-135m", "--adapters", ".", "--chat-template",
                                      "t.jinja", "--kind", "causal-lm"])
    assert args.chat_template == "t.jinja" and args.kind == "causal-lm"


def test_smollm2_chat_over_http(tmp_path) -> None:
    """The real packaged SmolLM2-135M-Instruct: its own template, a few greedy tokens as lorakit decodes them."""
    try:
        model, tokenizer = load_model("smollm2-135m", padding_side="left")
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    model.eval()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tokenizer) == im_end and im_end in eos_ids(model, tokenizer)  # EOS is the end of turn
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer(render_generation_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    ref = generate_ids(model, [ids], DecodeConfig(max_new_tokens=6), eos_token_id=eos_ids(model, tokenizer),
                       pad_token_id=tokenizer.pad_token_id)[0]
    server = serve_in_thread(build_engine(model, tokenizer, tmp_path), "smollm2-135m")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        reply = chat(client, "smollm2-135m", messages, max_tokens=6)
    finally:
        server.stop()
    assert reply.choices[0].message.content == tokenizer.decode(ref, skip_special_tokens=True)
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == len(ref)
