"""The HTTP server, started for real on 127.0.0.1 and called with the official ``openai`` client and httpx.

A small random Llama with GPT-2's vocabulary (so the real GPT-2 tokenizer applies) and adapters saved to a
temporary adapter folder; references come from lorakit's own decoding with one adapter active, never from
the server.
"""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path

import httpx
import openai
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

import lorakit
from lorakit.decode.api import generate_ids
from lorakit.decode.config import DecodeConfig
from lorakit.models import gpt2_tokenizer
from lorakit.serve.engine import GenerationRow
from lorakit.serve.server import build_engine, serve_in_thread

EOS = 50256
ADAPTERS = ("qv4", "all8", "proj2", "qv4b")


def tiny_llama(hidden: int = 32) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=50257, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS)
    return LlamaForCausalLM(config).eval()


def _configs() -> dict[str, lorakit.LoraConfig]:
    all7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return {
        "qv4": lorakit.LoraConfig(r=4, lora_alpha=64, init_lora_weights=False),
        "all8": lorakit.LoraConfig(r=8, lora_alpha=128, target_modules=all7, init_lora_weights=False),
        "proj2": lorakit.LoraConfig(r=2, lora_alpha=32, target_modules=["o_proj", "down_proj"],
                                    init_lora_weights=False),
        "qv4b": lorakit.LoraConfig(r=4, lora_alpha=64, init_lora_weights=False),
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_llama()
    root = tmp_path_factory.mktemp("adapters")
    for name, config in _configs().items():
        lorakit.add_adapter(model, config, name)
        lorakit.save_adapter(model, root / name, name)
    # references: each adapter alone through lorakit's decoding, before the server owns the model
    tokenizer = gpt2_tokenizer(padding_side="left")
    prompts = ["Hello world", "The cat sat on", "name : Eagle | food : Chinese"]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    refs = {}
    for name in (None, *ADAPTERS):
        lorakit.set_active_adapters(model, [name] if name else [])
        ids = generate_ids(model, encoded, DecodeConfig(max_new_tokens=10), eos_token_id=EOS, pad_token_id=EOS)
        refs[name] = [tokenizer.decode(t, skip_special_tokens=True) for t in ids]
    for name in ADAPTERS:
        lorakit.delete_adapter(model, name)
    # one adapter made for another base (hidden size 48), one with an escaping symlink, one broken
    other = tiny_llama(hidden=48)
    lorakit.add_adapter(other, lorakit.LoraConfig(r=4), "x")
    lorakit.save_adapter(other, root / "otherbase", "x")
    outside = tmp_path_factory.mktemp("outside")
    lorakit.save_adapter(other, outside / "secret", "x")
    os.symlink(outside / "secret", root / "escape")
    (root / "broken").mkdir()
    (root / "broken" / "adapter_config.json").write_text("{not json")
    engine = build_engine(model, tokenizer, root, max_loaded=3, max_batch=8)
    server = serve_in_thread(engine, "tiny-llama")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    yield {"server": server, "client": client, "refs": refs, "prompts": prompts, "root": root, "engine": engine}
    server.stop()


def _complete(client: openai.OpenAI, model: str, prompt: str, **kw) -> openai.types.Completion:
    return client.completions.create(model=model, prompt=prompt, max_tokens=kw.pop("max_tokens", 10),
                                     temperature=kw.pop("temperature", 0), **kw)


def test_references_differ_so_routing_matters(setup) -> None:
    refs = setup["refs"]
    assert len({tuple(refs[name]) for name in refs}) == len(refs)


def test_models_lists_base_and_adapters(setup) -> None:
    ids = [m.id for m in setup["client"].models.list().data]
    assert ids[0] == "tiny-llama"
    assert set(ADAPTERS) <= set(ids)
    assert "escape" not in ids  # a symlink out of the adapter folder is not offered


def test_concurrent_requests_for_different_adapters_equal_each_alone(setup) -> None:
    client, refs, prompts = setup["client"], setup["refs"], setup["prompts"]
    jobs = [(name, i) for name in ("tiny-llama", *ADAPTERS) for i in range(len(prompts))]
    results: dict[tuple[str, int], str] = {}
    errors: list[BaseException] = []

    def run(name: str, i: int) -> None:
        try:
            results[(name, i)] = _complete(client, name, prompts[i]).choices[0].text
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (name, i), text in results.items():
        assert text == refs[None if name == "tiny-llama" else name][i], (name, i)
    assert setup["engine"].pool.evictions > 0  # 4 adapters, room for 3: the LRU cache had to make room


def test_engine_mixed_batch_in_one_prefill_equals_alone(setup) -> None:
    """Rows queued before the engine looks: they are prefilled and decoded as one mixed batch."""
    engine, refs, prompts = setup["engine"], setup["refs"], setup["prompts"]
    tok = engine.tokenizer
    done = threading.Event()
    out: dict[int, list[str]] = {}
    names = [None, "qv4", "proj2", "qv4", None, "proj2"]
    finished = []

    def emit(kind: str, data: dict) -> None:
        if kind == "text":
            out.setdefault(data["index"], []).append(data["text"])
        else:
            finished.append(data)
            if len(finished) == len(names):
                done.set()

    rows = [GenerationRow(name, tok(prompts[k % 3], add_special_tokens=False)["input_ids"], 10, 0.0, 1.0, [], emit,
                          index=k) for k, name in enumerate(names)]
    for name in ("qv4", "proj2"):
        engine.load(name).result(timeout=30)
    with engine._cond:  # hold the engine off until all rows are queued
        engine.generate(rows)
    assert done.wait(30)
    for k, name in enumerate(names):
        assert "".join(out.get(k, [])) == refs[name][k % 3]


def test_stream_matches_non_stream_and_finish_reasons(setup) -> None:
    client, refs = setup["client"], setup["refs"]
    chunks = list(_complete(client, "all8", setup["prompts"][1], stream=True))
    assert "".join(c.choices[0].text for c in chunks) == refs["all8"][1]
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    with httpx.stream("POST", setup["server"].url + "/v1/completions", timeout=30,
                      json={"model": "qv4", "prompt": "Hello world", "max_tokens": 3, "temperature": 0,
                            "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_stop_n_seed_and_top_p(setup) -> None:
    client, refs = setup["client"], setup["refs"]
    full = refs["qv4"][0]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    r = _complete(client, "qv4", setup["prompts"][0], stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    a = _complete(client, "qv4", "Hello", temperature=1.0, top_p=0.9, n=3, seed=7, max_tokens=6)
    b = _complete(client, "qv4", "Hello", temperature=1.0, top_p=0.9, n=3, seed=7, max_tokens=6)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert sorted(c.index for c in a.choices) == [0, 1, 2]
    assert len({c.text for c in a.choices}) > 1  # n samples, each its own seed
    prompt_tokens = len(setup["engine"].tokenizer("Hello", add_special_tokens=False)["input_ids"])
    assert a.usage.prompt_tokens == 3 * prompt_tokens
    at_length = sum(c.finish_reason == "length" for c in a.choices)
    assert 6 * at_length <= a.usage.completion_tokens <= 18
    assert at_length == 3 or a.usage.completion_tokens < 18  # a choice that stopped early generated fewer


def test_bad_requests_get_clear_errors(setup) -> None:
    client = setup["client"]
    with pytest.raises(openai.NotFoundError, match="no adapter named 'nope'"):
        _complete(client, "nope", "hi")
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        _complete(client, "qv4", "hi", max_tokens=0)
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        _complete(client, "qv4", "hi", temperature=5)
    with pytest.raises(openai.BadRequestError, match="context of 64 tokens"):
        _complete(client, "qv4", "word " * 80)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _complete(client, "qv4", "word " * 40, max_tokens=40)
    with pytest.raises(openai.BadRequestError, match="not allowed"):
        _complete(client, "../outside", "hi")
    with pytest.raises(openai.BadRequestError, match="leaves the adapter folder"):
        _complete(client, "escape", "hi")
    with pytest.raises(openai.BadRequestError, match="'broken' cannot be read"):
        _complete(client, "broken", "hi")
    url = setup["server"].url
    r = httpx.post(url + "/v1/completions", content=b"{bad json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("the body is not valid JSON")
    body = b'{"model": "qv4", "prompt": "x"}'  # valid JSON, but not sent as JSON
    for kind in ("text/plain", "application/x-www-form-urlencoded", None):
        r = httpx.post(url + "/v1/completions", content=body, headers={"content-type": kind} if kind else {})
        assert r.status_code == 400 and "Content-Type: application/json" in r.json()["error"]["message"], r.text
    r = httpx.post(url + "/v1/completions", json={"model": "qv4", "prompt": "x", "bogus": 1})
    assert r.status_code == 422 and "bogus" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/completions", json={"model": "qv4", "prompt": "x", "logprobs": 2})
    assert r.status_code == 422 and "logprobs" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/classify", json={"model": "qv4", "input": "x"})
    assert r.status_code == 400 and "classification" in r.json()["error"]["message"]


def test_adapter_for_another_base_is_refused_and_nothing_else_changes(setup) -> None:
    client, refs, url = setup["client"], setup["refs"], setup["server"].url
    before = [m.id for m in client.models.list().data]
    r = httpx.post(url + "/v1/adapters/load", json={"name": "otherbase"}, timeout=30)
    assert r.status_code == 400 and "does not fit the served base model" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="does not fit"):
        _complete(client, "otherbase", "hi")
    assert "otherbase" not in setup["engine"].loaded()
    assert [m.id for m in client.models.list().data] == before
    for name in ("qv4", "tiny-llama"):
        assert _complete(client, name, setup["prompts"][0]).choices[0].text == refs.get(name, refs[None])[0]


def test_load_unload_register_and_path_checks(setup) -> None:
    url, client, refs = setup["server"].url, setup["client"], setup["refs"]
    assert httpx.post(url + "/v1/adapters/load", json={"name": "proj2"}, timeout=30).json()["loaded"] is True
    assert "proj2" in httpx.get(url + "/health").json()["loaded_adapters"]
    assert httpx.post(url + "/v1/adapters/unload", json={"name": "proj2"}, timeout=30).json()["unloaded"] is True
    assert "proj2" not in httpx.get(url + "/health").json()["loaded_adapters"]
    assert _complete(client, "proj2", setup["prompts"][2]).choices[0].text == refs["proj2"][2]  # read again lazily
    r = httpx.post(url + "/v1/adapters/load", json={"name": "alias", "path": "all8"}, timeout=30)
    assert r.status_code == 200
    assert _complete(client, "alias", setup["prompts"][1]).choices[0].text == refs["all8"][1]
    r = httpx.post(url + "/v1/adapters/load", json={"name": "evil", "path": "../../etc"}, timeout=30)
    assert r.status_code == 400 and "leaves the adapter folder" in r.text
    r = httpx.post(url + "/v1/adapters/load", json={"name": "evil", "path": "/etc"}, timeout=30)
    assert r.status_code == 400 and "relative" in r.text
    r = httpx.post(url + "/v1/adapters/unload", json={"name": "missing"}, timeout=30)
    assert r.status_code == 404


def test_health_and_metrics(setup) -> None:
    url = setup["server"].url
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-llama"
    _complete(setup["client"], "qv4", "hi", max_tokens=2)
    text = httpx.get(url + "/metrics").text
    line = next(x for x in text.splitlines()
                if x.startswith('lorakit_requests_total{endpoint="/v1/completions",status="200"}'))
    assert float(line.split()[-1]) >= 1
    assert 'lorakit_request_seconds_bucket{endpoint="/v1/completions",le="+Inf"}' in text
    assert "lorakit_adapters_loaded" in text and "lorakit_generated_tokens_total" in text


@pytest.fixture(scope="module")
def classifier_server(tmp_path_factory):
    torch.manual_seed(1)
    config = BertConfig(vocab_size=50257, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=3, pad_token_id=EOS)
    model = BertForSequenceClassification(config).eval()
    root = tmp_path_factory.mktemp("nlu")
    tokenizer = gpt2_tokenizer()
    texts = ["a fine film", "dull and long", "ok"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    refs = {}
    for name in ("sst", "nli"):
        lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=32, modules_to_save=["classifier"],
                                                      init_lora_weights=False), name)
        for p in model.classifier.modules_to_save[name].parameters():
            torch.nn.init.normal_(p, std=0.5)
        lorakit.save_adapter(model, root / name, name)
        with torch.no_grad():
            refs[name] = model(**enc).logits.softmax(-1)
        lorakit.delete_adapter(model, name)
    for name, width in (("sts", 1), ("mrpc", 2)):  # other tasks' heads: 1 output (regression), 2 labels
        task = copy.deepcopy(model)
        task.classifier = torch.nn.Linear(32, width)
        lorakit.add_adapter(task, lorakit.LoraConfig(r=4, modules_to_save=["classifier"], init_lora_weights=False),
                            name)
        lorakit.save_adapter(task, root / name, name)
        alone = copy.deepcopy(model)
        lorakit.load_adapter(alone, root / name, name, head_size_from_file=True)
        with torch.no_grad():
            out = alone(**enc).logits
        refs[name] = out if width == 1 else out.softmax(-1)
    (root / "sst" / "labels.json").write_text(json.dumps(["negative", "neutral", "positive"]))
    bare = copy.deepcopy(model)
    engine = build_engine(model, tokenizer, root, max_loaded=4)
    server = serve_in_thread(engine, "tiny-bert")
    yield server, refs, texts, (bare, tokenizer, root)
    server.stop()


def test_classify_mixed_adapters_equal_each_alone(classifier_server) -> None:
    server, refs, texts, _ = classifier_server
    results = {}

    def run(name: str) -> None:
        results[name] = httpx.post(server.url + "/v1/classify", json={"model": name, "input": texts}, timeout=30)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("sst", "nli", "sts", "mrpc")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("sst", "nli", "mrpc"):
        data = results[name].json()["data"]
        got = torch.tensor([[row["scores"][k] for k in row["scores"]] for row in data])
        torch.testing.assert_close(got, refs[name], rtol=1e-4, atol=1e-5)
    # heads of 1, 2 and 3 outputs served by one base, whatever batch they shared
    assert len(results["mrpc"].json()["data"][0]["scores"]) == 2
    sts = results["sts"].json()["data"]
    assert [row["label"] for row in sts] == [None] * len(texts)
    torch.testing.assert_close(torch.tensor([[row["score"]] for row in sts]), refs["sts"], rtol=1e-4, atol=1e-5)
    assert set(results["sst"].json()["data"][0]["scores"]) == {"negative", "neutral", "positive"}
    assert results["nli"].json()["data"][0]["label"].startswith("LABEL_")
    r = httpx.post(server.url + "/v1/completions", json={"model": "sst", "prompt": "x"})
    assert r.status_code == 400
    r = httpx.post(server.url + "/v1/classify", json={"model": "sst", "input": [["premise", "hypothesis"]]})
    assert r.status_code == 200 and len(r.json()["data"]) == 1


def test_cli_parser_is_wired() -> None:
    from lorakit.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "smollm2-135m", "--adapters", str(Path.cwd()),
                                      "--max-loaded", "3"])
    assert args.max_loaded == 3 and args.func.__name__ == "run_serve"


def test_unload_pending_when_its_adapter_is_evicted_still_answers(setup, tmp_path) -> None:
    """An unload request whose adapter leaves memory another way (evicted for a new one) is answered."""
    engine = build_engine(tiny_llama(), gpt2_tokenizer(padding_side="left"), setup["root"], max_loaded=1)
    engine.pool.attach(engine.registry.read("qv4"))
    future = engine.unload("qv4")
    for command in list(engine._commands):  # what the engine thread does first in its loop
        command()
    engine.pool.attach(engine.registry.read("all8"))  # evicts qv4, idle with its unload pending
    engine._finish_unloads()
    assert future.result(timeout=0) is True and "qv4" not in engine.pool


def test_stopping_the_engine_answers_everyone_waiting(setup) -> None:
    engine = build_engine(tiny_llama(), gpt2_tokenizer(padding_side="left"), setup["root"], max_loaded=2)
    engine.pool.attach(engine.registry.read("qv4"))
    engine.pool.use("qv4")  # a running row holds it: its unload must wait
    engine.start()
    unload = engine.unload("qv4")
    engine.stop()
    with pytest.raises(RuntimeError, match="shutting down"):
        unload.result(timeout=5)


def test_heads_of_1_2_and_3_labels_in_one_classification_batch(classifier_server) -> None:
    """Jobs for four adapters queued before the engine starts run in one forward pass (heads of 3, 3, 1
    and 2 outputs); each gets exactly its own width and values."""
    _, refs, texts, (bare, tokenizer, root) = classifier_server
    engine = build_engine(copy.deepcopy(bare), tokenizer, root, max_loaded=4)
    names = ("sst", "nli", "sts", "mrpc")
    for name in names:
        engine.pool.attach(engine.registry.read(name))
    encodings = [tokenizer(t)["input_ids"] for t in texts]
    futures = {name: engine.classify(name, encodings) for name in names}
    forwards = []
    hook = engine.model.register_forward_hook(lambda module, args, kwargs_out: forwards.append(1))
    engine.start()
    try:
        results = {name: future.result(timeout=30) for name, future in futures.items()}
    finally:
        engine.stop()
        hook.remove()
    assert len(forwards) == 1  # one mixed batch
    for name in names:
        logits, _ = results[name]
        expected = refs[name]
        assert logits.shape == expected.shape and not torch.isnan(logits).any()
        got = logits if expected.shape[1] == 1 else logits.softmax(-1)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_late_commands_and_cancelled_unloads_are_answered(setup) -> None:
    engine = build_engine(tiny_llama(), gpt2_tokenizer(padding_side="left"), setup["root"], max_loaded=2)
    engine.pool.attach(engine.registry.read("qv4"))
    engine.pool.use("qv4")  # a running row holds it: its unload waits
    engine.start()
    unload = engine.unload("qv4")
    load = engine.load("qv4")  # cancels the pending unload
    assert load.result(timeout=5) is None and unload.result(timeout=5) is False
    engine.stop()
    late = engine.load("all8")
    with pytest.raises(RuntimeError, match="shutting down"):
        late.result(timeout=5)
