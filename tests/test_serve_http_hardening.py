"""The HTTP server against hostile or careless clients and adapter files (issue 11), over real HTTP on 127.0.0.1.

Each test names the failure it guards against; every one of them failed on the code before its fix.
Servers are small (a random 2-layer Llama with GPT-2's vocabulary, a random 2-layer BERT) and started once
per module; each kind of server configuration (no tokens, both tokens, an API key only) gets its own.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import safetensors.torch
import torch
from test_serve_api import EOS, _configs, tiny_llama
from transformers import BertConfig, BertForSequenceClassification

import lorakit
import lorakit.serve.pool as pool_module
import lorakit.serve.registry as registry_module
from lorakit.models import gpt2_tokenizer
from lorakit.serve.server import build_engine, serve_in_thread

BASE = "tiny-llama"
MAX_BODY = 64 * 1024
API_KEY = "key-for-completions"
ADMIN_TOKEN = "token-for-admin"


def _adapters(root: Path, outside: Path) -> None:
    """Good adapters, plus every hostile file the server must refuse."""
    torch.manual_seed(0)
    model = tiny_llama()
    configs = _configs()
    for name in ("qv4", "all8", "proj2"):
        lorakit.add_adapter(model, configs[name], name)
        lorakit.save_adapter(model, root / name, name)
    # NaN weights
    lorakit.save_adapter(model, root / "nanweights", "qv4")
    weights = root / "nanweights" / "adapter_model.safetensors"
    with safetensors.safe_open(weights, "pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = float("nan")
    safetensors.torch.save_file(tensors, weights, metadata=header)
    # "lora_alpha": NaN in the config (Python's json writes and reads the NaN token)
    lorakit.save_adapter(model, root / "nanalpha", "qv4")
    config_path = root / "nanalpha" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["lora_alpha"] = float("nan")
    config_path.write_text(json.dumps(config))
    # a `lorakit` safetensors header entry that is valid JSON but not an object
    lorakit.save_adapter(model, root / "badheader", "qv4")
    weights = root / "badheader" / "adapter_model.safetensors"
    safetensors.torch.save_file(safetensors.torch.load_file(weights), weights, metadata={"lorakit": "[1, 2]"})
    # the folder is inside, but its weights file is a symlink to a file outside the adapter folder
    lorakit.save_adapter(model, outside / "secret", "all8")
    (root / "innerlink").mkdir()
    (root / "innerlink" / "adapter_config.json").write_text((outside / "secret" / "adapter_config.json").read_text())
    os.symlink(outside / "secret" / "adapter_model.safetensors", root / "innerlink" / "adapter_model.safetensors")
    (root / "broken").mkdir()
    (root / "broken" / "adapter_config.json").write_text("{not json")
    # finite, but lora_alpha / r overflows float32 once folded into the factors: every output NaN
    lorakit.save_adapter(model, root / "hugealpha", "qv4")
    config_path = root / "hugealpha" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "lora_alpha": 1e308}))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    _adapters(root, tmp_path_factory.mktemp("outside"))
    return root


def _server(root: Path, **options):
    torch.manual_seed(0)
    engine = build_engine(tiny_llama(), gpt2_tokenizer(padding_side="left"), root, max_loaded=3, max_batch=8)
    return serve_in_thread(engine, BASE, **options)


@pytest.fixture(scope="module")
def server(root):
    running = _server(root, max_body_bytes=MAX_BODY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def locked(root):
    running = _server(root, api_key=API_KEY, admin_token=ADMIN_TOKEN)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def key_only(root):
    running = _server(root, api_key=API_KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    torch.manual_seed(1)
    config = BertConfig(vocab_size=50257, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=3, pad_token_id=EOS)
    engine = build_engine(BertForSequenceClassification(config).eval(), gpt2_tokenizer(),
                          tmp_path_factory.mktemp("nlu"))
    running = serve_in_thread(engine, "tiny-bert")
    yield running
    running.stop()


def _post(server, path: str, body: dict | str | bytes, token: str | None = None, timeout: float = 30,
          **kw) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers=headers, timeout=timeout, **kw)


def _greedy(server, model: str, prompt: str = "Hello world", token: str | None = None) -> str:
    r = _post(server, "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 6, "temperature": 0},
              token)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def _model_ids(server, token: str | None = None) -> list[str]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(server.url + "/v1/models", headers=headers)
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["data"]]


def _error(r: httpx.Response, status: int) -> dict:
    """The OpenAI-shaped error of a response that must have ``status``."""
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()["error"]


# --- item 3: a name means one adapter for the server's life; failed loads leave nothing behind; tokens

def test_registering_a_served_name_for_another_path_is_409_and_changes_nothing(server) -> None:
    before = _greedy(server, "qv4")
    assert _post(server, "/v1/adapters/load", {"name": "qv4"}).status_code == 200
    r = _post(server, "/v1/adapters/load", {"name": "qv4", "path": "all8"})
    assert "already" in _error(r, 409)["message"]
    assert _post(server, "/v1/adapters/unload", {"name": "qv4"}).json()["unloaded"] is True
    assert _greedy(server, "qv4") == before  # read again: still qv4's own file
    # an alias is the same: once it names a folder, it names that one; naming the same folder again is fine
    assert _post(server, "/v1/adapters/load", {"name": "alias8", "path": "all8"}).status_code == 200
    assert _post(server, "/v1/adapters/load", {"name": "alias8", "path": "all8"}).status_code == 200
    _error(_post(server, "/v1/adapters/load", {"name": "alias8", "path": "proj2"}), 409)
    assert _greedy(server, "alias8") == _greedy(server, "all8")
    # the base model's name is not an adapter name
    _error(_post(server, "/v1/adapters/load", {"name": BASE, "path": "qv4"}), 409)


def test_a_failed_load_leaves_no_name_behind(server) -> None:
    for i, path in enumerate(("broken", "nanweights", "missing", "badheader")):
        r = _post(server, "/v1/adapters/load", {"name": f"ghost{i}", "path": path})
        assert r.status_code in (400, 404), r.text
    assert not [name for name in _model_ids(server) if name.startswith("ghost")]
    # the name is still free: it can be registered for a good adapter afterwards
    assert _post(server, "/v1/adapters/load", {"name": "ghost0", "path": "proj2"}).status_code == 200


def test_errors_do_not_reveal_where_the_adapter_folder_is(server, root) -> None:
    for body in ({"name": "broken"}, {"name": "nanweights"}, {"name": "nope"}):
        error = _error(_post(server, "/v1/adapters/load", body), 404 if body["name"] == "nope" else 400)
        assert str(root) not in error["message"] and body["name"] in error["message"]
    # a name that spells the folder's path is refused as sent, with the folder hidden (not cut to a valid name)
    error = _error(_post(server, "/v1/completions", {"model": f"{root}/qv4", "prompt": "Hi", "max_tokens": 1}), 400)
    assert str(root) not in error["message"] and "'<adapter folder>/qv4'" in error["message"], error


def test_api_key_guards_completions_and_models_the_openai_way(locked) -> None:
    client = openai.OpenAI(base_url=locked.url + "/v1", api_key=API_KEY, max_retries=0)
    reply = client.completions.create(model="qv4", prompt="Hello", max_tokens=2, temperature=0)
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert BASE in [m.id for m in client.models.list().data]
    for wrong in ("wrong", API_KEY + "x", ADMIN_TOKEN):
        bad = openai.OpenAI(base_url=locked.url + "/v1", api_key=wrong, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="qv4", prompt="Hello", max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    r = httpx.post(locked.url + "/v1/completions", json={"model": "qv4", "prompt": "x"})
    error = _error(r, 401)
    assert error["code"] == "invalid_api_key" and "API key" in error["message"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    _error(httpx.post(locked.url + "/v1/classify", json={"model": "qv4", "input": "x"}), 401)
    assert httpx.get(locked.url + "/health").status_code == 200  # probes need no key


def test_admin_token_guards_load_and_unload(locked) -> None:
    for token in (None, "wrong", API_KEY):  # the API key is not an admin token
        error = _error(_post(locked, "/v1/adapters/load", {"name": "proj2"}, token), 401)
        assert "admin" in error["message"]
        _error(_post(locked, "/v1/adapters/unload", {"name": "proj2"}, token), 401)
    assert "proj2" not in httpx.get(locked.url + "/health").json()["loaded_adapters"]
    r = _post(locked, "/v1/adapters/load", {"name": "proj2"}, ADMIN_TOKEN)
    assert r.status_code == 200 and r.json()["loaded"] is True
    r = _post(locked, "/v1/adapters/unload", {"name": "proj2"}, ADMIN_TOKEN)
    assert r.status_code == 200 and r.json()["unloaded"] is True


def test_with_only_an_api_key_admin_endpoints_need_it_too(key_only) -> None:
    _error(_post(key_only, "/v1/adapters/load", {"name": "qv4"}), 401)
    _error(_post(key_only, "/v1/adapters/load", {"name": "qv4"}, "wrong"), 401)
    assert _post(key_only, "/v1/adapters/load", {"name": "qv4"}, API_KEY).status_code == 200
    _error(httpx.get(key_only.url + "/v1/models"), 401)


def test_token_and_body_limit_flags_default_from_the_environment(monkeypatch) -> None:
    from lorakit.cli import build_parser

    monkeypatch.setenv("LORAKIT_API_KEY", "k1")
    monkeypatch.setenv("LORAKIT_ADMIN_TOKEN", "t1")
    args = build_parser().parse_args(["serve", "--model", "m", "--adapters", "."])
    assert (args.api_key, args.admin_token, args.max_body_bytes) == ("k1", "t1", 1024 * 1024)
    args = build_parser().parse_args(["serve", "--model", "m", "--adapters", ".", "--api-key", "k2",
                                      "--max-body-bytes", "4096"])
    assert (args.api_key, args.max_body_bytes) == ("k2", 4096)


# --- item 4: reading and planning an adapter never holds up serving; hostile files are 400s naming it

def test_a_slow_adapter_plan_does_not_block_other_requests(server, monkeypatch) -> None:
    """A load whose planning (target matching included) takes long must not stall the engine thread."""
    entered, release = threading.Event(), threading.Event()
    original = pool_module.plan_routed_adapter

    def slow_plan(*args, **kw):
        entered.set()
        release.wait(30)
        return original(*args, **kw)

    monkeypatch.setattr(pool_module, "plan_routed_adapter", slow_plan)
    result: dict[str, httpx.Response] = {}
    loader = threading.Thread(target=lambda: result.setdefault(
        "load", _post(server, "/v1/adapters/load", {"name": "slowplan", "path": "proj2"}, timeout=60)))
    loader.start()
    try:
        assert entered.wait(30)
        r = _post(server, "/v1/completions", {"model": BASE, "prompt": "Hi", "max_tokens": 2, "temperature": 0},
                  timeout=5)  # before the fix: a timeout, the engine thread waiting in the plan
        assert r.status_code == 200
        assert "slowplan" not in httpx.get(server.url + "/health").json()["loaded_adapters"]
    finally:
        release.set()
        loader.join(60)
    assert result["load"].status_code == 200, result["load"].text
    assert _greedy(server, "slowplan") == _greedy(server, "proj2")


@pytest.mark.parametrize("name", ["nanweights", "nanalpha"])
def test_non_finite_adapter_files_are_refused_with_400(server, name: str) -> None:
    error = _error(_post(server, "/v1/adapters/load", {"name": name}), 400)
    assert repr(name) in error["message"]
    error = _error(_post(server, "/v1/completions", {"model": name, "prompt": "x", "max_tokens": 2}), 400)
    assert repr(name) in error["message"]
    assert name not in httpx.get(server.url + "/health").json()["loaded_adapters"]


def test_a_lorakit_header_that_is_not_an_object_is_a_400(server) -> None:
    error = _error(_post(server, "/v1/adapters/load", {"name": "badheader"}), 400)
    assert "'badheader'" in error["message"] and "lorakit" in error["message"]


def test_a_symlink_inside_an_adapter_folder_leading_out_is_refused(server) -> None:
    error = _error(_post(server, "/v1/adapters/load", {"name": "innerlink"}), 400)
    assert "leaves the adapter folder" in error["message"]
    _error(_post(server, "/v1/completions", {"model": "innerlink", "prompt": "x", "max_tokens": 2}), 400)
    assert "innerlink" not in httpx.get(server.url + "/health").json()["loaded_adapters"]


# --- item 5: plain 500s that must be 4xx naming the field

@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422_naming_the_field(server, field: str, value: str) -> None:
    r = _post(server, "/v1/completions", f'{{"model": "qv4", "prompt": "x", "max_tokens": 2, "{field}": {value}}}')
    error = _error(r, 422)
    assert error["param"] == field and field in error["message"]


def test_an_empty_prompt_list_is_a_4xx_naming_prompt(server) -> None:
    for prompt in ([], [[]], [""], ["ok", ""]):
        r = _post(server, "/v1/completions", {"model": "qv4", "prompt": prompt, "max_tokens": 2})
        assert r.status_code in (400, 422), (prompt, r.text)
        assert r.json()["error"]["param"] == "prompt"


def test_lone_surrogates_are_422_naming_the_field(server) -> None:
    for field in ("prompt", "stop", "user"):
        raw = f'{{"model": "qv4", "prompt": "ok", "max_tokens": 2, "{field}": "\\ud800x"}}'
        error = _error(_post(server, "/v1/completions", raw), 422)
        assert error["param"] == field and "unicode" in error["message"]
    raw = '{"model": "qv4", "prompt": ["ok", "\\udfff"], "max_tokens": 2}'
    assert _error(_post(server, "/v1/completions", raw), 422)["param"].startswith("prompt")
    raw = '{"name": "x", "path": "qv4\\ud800"}'
    assert _error(_post(server, "/v1/adapters/load", raw), 422)["param"] == "path"


def test_seeds_outside_64_bits_are_422_and_every_64_bit_seed_works(server) -> None:
    for seed in (2**70, 2**64, -(2**63) - 1):
        error = _error(_post(server, "/v1/completions", {"model": "qv4", "prompt": "x", "seed": seed}), 422)
        assert error["param"] == "seed"
    for seed in (2**64 - 1, -(2**63), -1):  # each row's seed is derived modulo 2**64 (decode.sampling.row_seed)
        r = _post(server, "/v1/completions", {"model": "qv4", "prompt": ["a", "b"], "n": 2, "seed": seed,
                                              "max_tokens": 2, "temperature": 1.0})
        assert r.status_code == 200, (seed, r.text)


def test_paths_and_names_with_control_characters_are_refused(server) -> None:
    for body in ({"name": "nul", "path": "qv4\u0000"}, {"name": "qv4\u0000"}, {"name": "evil\n", "path": "qv4"},
                 {"name": "evil\n"}, {"name": "tab", "path": "qv4\t"}):
        r = _post(server, "/v1/adapters/load", body)
        assert r.status_code in (400, 422), (body, r.text)
        assert r.json()["error"]["param"] in ("name", "path"), body
    _error(_post(server, "/v1/completions", {"model": "qv4\n", "prompt": "x"}), 400)
    assert not [n for n in _model_ids(server) if not n.isprintable()]
    r = _post(server, "/v1/adapters/load", {"name": "long", "path": "a/" * 3000})
    assert r.status_code in (400, 422) and r.json()["error"]["param"] == "path"


def test_request_bodies_over_the_limit_are_413_before_being_read(server) -> None:
    big = json.dumps({"model": BASE, "prompt": "x", "max_tokens": 1, "user": "u" * MAX_BODY})
    error = _error(_post(server, "/v1/completions", big), 413)
    assert str(MAX_BODY) in error["message"]

    def chunks():  # no content-length: chunked transfer encoding
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192].encode()

    _error(httpx.post(server.url + "/v1/completions", content=chunks(),
                      headers={"content-type": "application/json"}, timeout=30), 413)
    small = json.dumps({"model": BASE, "prompt": "x", "max_tokens": 1, "user": "u" * (MAX_BODY // 2)})
    assert _post(server, "/v1/completions", small).status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200


def test_error_bodies_are_always_json_even_for_odd_inputs(server) -> None:
    """The 422 body echoes inputs: non-finite numbers and surrogates must not break its serialisation."""
    raw = '{"model": "qv4", "prompt": "x", "logit_bias": {"5": NaN}, "frequency_penalty": Infinity}'
    body = _error(_post(server, "/v1/completions", raw), 422)
    assert body["message"]
    raw = '{"model": "qv4", "prompt": 5, "user": "\\ud800"}'
    assert _error(_post(server, "/v1/completions", raw), 422)["message"]


def test_stream_options_and_token_ids_are_checked(server) -> None:
    r = _post(server, "/v1/completions", {"model": BASE, "prompt": "x", "stream_options": {"include_usage": "maybe"}})
    assert _error(r, 422)["param"].startswith("stream_options")
    for prompt in ([5, -1], [5, 2**70], [[5], [50257]]):
        r = _post(server, "/v1/completions", {"model": BASE, "prompt": prompt, "max_tokens": 1})
        assert r.status_code in (400, 422) and r.json()["error"]["param"] == "prompt", (prompt, r.text)
    r = _post(server, "/v1/completions", {"model": BASE, "prompt": "x", "max_tokens": 2**70})
    assert r.status_code in (400, 422) and r.json()["error"]["param"] == "max_tokens"


def test_unload_refuses_a_path(server) -> None:
    """``path`` means nothing to unload: accepting it would let a client think it unloaded that folder."""
    error = _error(_post(server, "/v1/adapters/unload", {"name": "qv4", "path": "all8"}), 422)
    assert error["param"] == "path"
    error = _error(_post(server, "/v1/adapters/unload", {"name": BASE}), 400)  # as load says, whatever the name
    assert error["param"] == "name" and "the base cannot be unloaded" in error["message"], error
    assert _greedy(server, BASE)


def test_classify_inputs_are_checked(classifier) -> None:
    url = classifier.url + "/v1/classify"
    ok = httpx.post(url, json={"model": "tiny-bert", "input": ["a fine film"]}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["data"]) == 1, ok.text
    for body in ({"model": "tiny-bert", "input": ""}, {"model": "tiny-bert", "input": ["fine", ""]},
                 {"model": "tiny-bert", "input": [["", "x"]]}, {"model": "tiny-bert", "input": []}):
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code in (400, 422) and r.json()["error"]["param"].startswith("input"), (body, r.text)
    raw = '{"model": "tiny-bert", "input": ["ok", "\\ud800"]}'
    r = httpx.post(url, content=raw, headers={"content-type": "application/json"}, timeout=30)
    assert _error(r, 422)["param"].startswith("input")
    r = httpx.post(url, json={"model": "tiny-bert", "input": ["x"] * 5000}, timeout=30)
    error = _error(r, 422)
    assert error["param"] == "input" and "at most 2048 inputs per request, got 5000" in error["message"], error
    long = "a fine film " * 400  # 4,800 characters: one text, far over the context, is truncated like a list's
    single, listed = (httpx.post(url, json={"model": "tiny-bert", "input": body}, timeout=30)
                      for body in (long, [long]))
    assert single.status_code == 200 and single.json()["data"] == listed.json()["data"], single.text


def test_a_plan_made_before_another_adapter_wrapped_its_modules_attaches_exactly(root) -> None:
    """Planning runs on a loader thread, so an adapter may be planned against modules another adapter wraps
    before it is attached; attaching then reuses those wrappers and computes what a fresh plan would."""
    engines = []
    for _ in range(2):
        torch.manual_seed(0)
        engines.append(build_engine(tiny_llama(), gpt2_tokenizer(padding_side="left"), root, max_loaded=3))
    late, fresh = engines
    stale = late.registry.read("qv4")  # planned now, on the bare model
    assert stale.plan is not None and stale.plan.wrap
    late.pool.attach(late.registry.read("all8"))  # wraps q_proj and v_proj (and the rest)
    late.pool.attach(stale)
    assert not stale.plan.wrap  # rebound to all8's wrappers rather than wrapping twice
    fresh.pool.attach(fresh.registry.read("qv4"))
    ids = torch.randint(0, 50257, (1, 7), generator=torch.Generator().manual_seed(5)).repeat(2, 1)
    outs = []
    for engine in engines:
        engine.pool.routing.set_rows([engine.pool.routed_name("qv4"), None])
        with torch.no_grad():
            outs.append(engine.model(input_ids=ids).logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert (outs[0][0] - outs[0][1]).abs().max() > 1e-3  # row 0 (qv4) differs from row 1 (base): it acts


def test_unparseable_bodies_and_unknown_paths_get_openai_shaped_errors(server) -> None:
    """Python's JSON parser raises on 5,000-digit integers and on deep nesting; starlette then answered
    ``{"detail": ...}``, which the openai client cannot read."""
    for raw in ('{"model": "qv4", "prompt": "x", "max_tokens": ' + "9" * 5000 + "}",
                '{"model": "qv4", "prompt": ' + "[" * 5000 + "]" * 5000 + "}"):
        assert _error(_post(server, "/v1/completions", raw), 400)["message"]
    assert _error(httpx.get(server.url + "/v1/nothing"), 404)["message"]
    assert _error(httpx.get(server.url + "/v1/completions"), 405)["message"]


# --- found by the closing round of hostile inputs


def test_a_very_long_stop_sequence_is_422(server) -> None:
    """Stop matching runs on the engine thread for every generated token: a 100,000-character stop string
    made a 50-token request take 5 s (and everyone sharing its batch with it)."""
    r = _post(server, "/v1/completions", {"model": "qv4", "prompt": "x", "max_tokens": 2, "stop": ["x" * 5_000]})
    error = _error(r, 422)
    assert error["param"] == "stop" and "characters" in error["message"]
    assert _post(server, "/v1/completions", {"model": "qv4", "prompt": "x", "max_tokens": 2,
                                            "stop": ["y" * 200]}).status_code == 200


@pytest.mark.parametrize(("field", "value"), [("max_tokens", True), ("n", True), ("seed", False),
                                              ("temperature", True), ("top_k", True), ("prompt", [True, 5])])
def test_booleans_are_not_numbers(server, field: str, value) -> None:
    """JSON ``true`` is not the number 1: pydantic's lax mode would read ``"max_tokens": true`` as 1."""
    body = {"model": "qv4", "prompt": "x", "max_tokens": 2, field: value}
    error = _error(_post(server, "/v1/completions", body), 422)
    assert error["param"] == field


# --- found by a hostile-input audit (2026-11-28)


def test_a_long_mixed_list_gets_one_short_error(server) -> None:
    """pydantic checked every item of a mixed prompt list against every alternative of the field's type and
    reported each: a 1 MB body got a 59 MB 422, built on the event loop while every other request waited."""
    cases = [("prompt", ["a", *[1] * 20_000], "prompt[1] is a token id but prompt[0] is a text"),
             ("prompt", [[1, 2], [3, "x"]], "prompt[1][1] is a text"),
             ("stop", ["a", *[1] * 20_000], "at most 4 stop sequences"),
             ("stop", ["a", 1], "stop[1] is a token id")]
    for field, value, message in cases:
        r = _post(server, "/v1/completions", {"model": "qv4", "prompt": "x", "max_tokens": 2, field: value})
        error = _error(r, 422)
        assert error["param"] == field and message in error["message"], error
        assert len(r.content) < 2_000, (field, len(r.content))
    many = {"model": "qv4", "prompt": "x", **{f"unknown{i}": 1 for i in range(200)}}  # 200 problems
    r = _post(server, "/v1/completions", many)
    error = _error(r, 422)
    assert error["message"].endswith("and 195 more") and len(r.json()["detail"]) == 5 and len(r.content) < 4_000


def test_a_request_that_can_never_fit_the_queue_is_refused_before_tokenizing(server) -> None:
    """The 413 for more rows than --max-queue came after tokenizing every prompt, on the one tokenizer thread
    every request shares. Token ids outside the vocabulary (a 400 once tokenized) show which check ran first."""
    error = _error(_post(server, "/v1/completions", {"model": "qv4", "prompt": [[10**9]] * 300, "max_tokens": 2}),
                   413)
    assert "300 queue rows" in error["message"]


@pytest.mark.parametrize(("field", "value"), [("max_tokens", "5"), ("temperature", "0"), ("stream", "yes"),
                                              ("seed", "1"), ("n", 2.5)])
def test_types_are_strict(server, field: str, value) -> None:
    """pydantic's lax mode read "5" as 5 and "yes" as true; OpenAI's API refuses them."""
    error = _error(_post(server, "/v1/completions", {"model": "qv4", "prompt": "x", field: value}), 422)
    assert error["param"] == field


@pytest.mark.parametrize(("path", "field", "value"), [
    ("/v1/completions", "best_of", 2), ("/v1/completions", "echo", True), ("/v1/completions", "suffix", "x"),
    ("/v1/completions", "logprobs", 2), ("/v1/completions", "logit_bias", {"5": 1.0}),
    ("/v1/completions", "presence_penalty", 0.5), ("/v1/chat/completions", "logprobs", True),
    ("/v1/chat/completions", "top_logprobs", 2)])
def test_unsupported_openai_fields_are_named(server, path: str, field: str, value) -> None:
    """They were refused by checks of the whole body: a 422 with ``param`` null and the message "body: ..."."""
    body = {"model": "qv4", "max_tokens": 2, field: value}
    body.update({"prompt": "x"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "x"}]})
    error = _error(_post(server, path, body), 422)
    assert error["param"] == field and f"{field}=" in error["message"] and "not supported" in error["message"]


def test_the_neutral_values_of_unsupported_fields_are_accepted(server) -> None:
    body = {"model": "qv4", "prompt": "x", "max_tokens": 2, "temperature": 0, "suffix": "", "best_of": 1,
            "echo": False, "logit_bias": {}, "presence_penalty": 0}
    assert _post(server, "/v1/completions", body).status_code == 200


def test_an_adapter_whose_scaling_overflows_is_refused_at_load(server) -> None:
    """``lora_alpha: 1e308`` is finite, so it loaded, and then every request for the adapter was a 500."""
    error = _error(_post(server, "/v1/adapters/load", {"name": "hugealpha"}), 400)
    assert "'hugealpha'" in error["message"] and "beyond torch.float32's range" in error["message"]
    _error(_post(server, "/v1/completions", {"model": "hugealpha", "prompt": "x", "max_tokens": 2}), 400)
    assert "hugealpha" not in httpx.get(server.url + "/health").json()["loaded_adapters"]


def test_names_added_with_a_path_are_bounded_and_a_bad_path_is_named(server, root, monkeypatch) -> None:
    """Every {name, path} load added a permanent name, without limit; a path without an adapter config was
    blamed on ``name``."""
    (root / "no-config").mkdir(exist_ok=True)
    error = _error(_post(server, "/v1/adapters/load", {"name": "fresh", "path": "no-config"}), 404)
    assert error["param"] == "path"
    registry = server.engine.registry
    monkeypatch.setattr(registry_module, "MAX_REGISTERED", len(registry._aliases) + 1)
    assert _post(server, "/v1/adapters/load", {"name": "alias-one", "path": "qv4"}).status_code == 200
    error = _error(_post(server, "/v1/adapters/load", {"name": "alias-two", "path": "qv4"}), 400)
    assert error["param"] == "name" and "names are registered with a path already" in error["message"]
    assert "alias-two" not in _model_ids(server)
    assert _post(server, "/v1/adapters/load", {"name": "alias-one", "path": "qv4"}).status_code == 200  # reuse


def test_a_client_that_leaves_mid_body_is_counted_as_499_and_the_server_answers_on(server) -> None:
    """BodyLimit answers a client that left mid-body all the same (nginx's 499, dropped by the server), so the
    metrics count it and no 'Exception in ASGI application' traceback is logged; the next request is answered."""
    def closed_requests() -> float:
        text = httpx.get(server.url + "/metrics", timeout=30).text
        found = re.search(r'^lorakit_requests_total\{endpoint="/v1/completions",status="499"\} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    before = closed_requests()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n" + b'{"model":')
    deadline = time.monotonic() + 10
    while closed_requests() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closed_requests() == before + 1
    assert _greedy(server, BASE)
