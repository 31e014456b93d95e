"""The serving engine under hostile or careless requests, over real HTTP on 127.0.0.1 (issue 11).

What must hold whatever a request does: it gets exactly one answer, its failure stays its own (the other rows
of its batch are served as if it were not there), and it never pins an adapter or a batch slot. Failures
that only a broken model, adapter or machine produces (out of memory, a loader that cannot start) are
injected at the engine's seams: the prefill, the forward pass and the adapter reader.

``paused(engine)`` holds the engine thread at the top of its loop, so every request sent meanwhile is
queued, then taken into one batch together once it is released.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import torch
from engine_fixtures import deadline_poll, paused
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

import lorakit
from lorakit.decode.sampling import Sampling, choose
from lorakit.models import gpt2_tokenizer
from lorakit.serve.engine import Engine, RequestRejected
from lorakit.serve.server import RunningServer, build_engine, serve_in_thread

EOS = 50256
ROWS = 50304  # embedding rows, padded past the tokenizer's 50257 as many real models are
PROMPTS = ("Hello world", "The cat sat on", "name : Eagle | food : Chinese")
TIMEOUT = 20.0  # a request that does not answer within this hangs: on the code before the fixes, they did


def tiny_llama(vocab: int = ROWS, context: int = 512) -> LlamaForCausalLM:
    special = EOS if vocab > EOS else 0
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         bos_token_id=special, eos_token_id=special, pad_token_id=special)
    return LlamaForCausalLM(config).eval()



class Calls:
    """HTTP calls made on threads (they block while the engine is paused); ``results()`` joins them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.threads: list[threading.Thread] = []
        self.out: dict[str, Any] = {}

    def post(self, key: str, path: str, body: dict[str, Any]) -> None:
        def run() -> None:
            try:
                self.out[key] = httpx.post(self.url + path, json=body, timeout=TIMEOUT)
            except BaseException as err:  # reported by results()
                self.out[key] = err

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def results(self) -> dict[str, httpx.Response]:
        for thread in self.threads:
            thread.join(TIMEOUT + 5)
        for key, value in self.out.items():
            assert isinstance(value, httpx.Response), f"{key}: no answer ({value!r})"
        return self.out


def completion(**body: Any) -> dict[str, Any]:
    return {"model": "tiny", "max_tokens": 6, "temperature": 0, **body}


def text_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [c["text"] for c in sorted(response.json()["choices"], key=lambda c: c["index"])]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[dict[str, Any]]:
    torch.manual_seed(0)
    model = tiny_llama()
    root = tmp_path_factory.mktemp("adapters")
    for name in ("qv4", "qv4b", "huge"):
        lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=64, init_lora_weights=False), name)
        if name == "huge":  # finite factors and max|B| max|A| r alpha/r = 3.2e38 within float32's range (so
            # they load), but every entry of the update is 3.2e38 and their sum over a row overflows: NaN scores
            with torch.no_grad():
                for param_name, param in model.named_parameters():
                    if name in param_name and ("lora_A" in param_name or "lora_B" in param_name):
                        param.fill_(0.5 if "lora_A" in param_name else 1e37)
        lorakit.save_adapter(model, root / name, name)
        lorakit.delete_adapter(model, name)
    engine = build_engine(model, gpt2_tokenizer(padding_side="left"), root, max_loaded=3, max_batch=8,
                          max_queue=16)
    server = serve_in_thread(engine, "tiny")
    refs = {}
    for name in ("tiny", "qv4"):  # before any test runs a hostile request next to them (a batch equals each
        texts = text_of(httpx.post(server.url + "/v1/completions", timeout=TIMEOUT,  # row alone: test_serve_api)
                                   json=completion(model=name, prompt=list(PROMPTS))))
        refs.update({(name, i): text for i, text in enumerate(texts)})
    yield {"server": server, "engine": engine, "url": server.url, "refs": refs}
    server.stop()


def _idle(engine: Engine) -> bool:
    return engine._live is None and engine.queued() == 0


def _adapter_refs(engine: Engine) -> dict[str, int]:
    return {name: loaded.refs for name, loaded in engine.pool.loaded.items()}


# --- 1. one request must never fail the others in its batch

@pytest.mark.parametrize("temperature", [1e-300, 1e-40])
def test_temperature_that_is_zero_in_float32_is_greedy_and_fails_nobody(served, temperature: float) -> None:
    url, refs, engine = served["url"], served["refs"], served["engine"]
    calls = Calls(url)
    with paused(engine):
        for i in range(3):
            calls.post(f"greedy{i}", "/v1/completions", completion(prompt=PROMPTS[i]))
        calls.post("tiny-t", "/v1/completions", completion(prompt=PROMPTS[0], temperature=temperature))
        deadline_poll(lambda: engine.queued() == 4, what="4 rows queued")
    out = calls.results()
    for i in range(3):
        assert text_of(out[f"greedy{i}"]) == [refs[("tiny", i)]]
    assert text_of(out["tiny-t"]) == [refs[("tiny", 0)]]  # below the floor: greedy, documented


def test_non_finite_scores_fail_only_their_own_rows(served) -> None:
    """An adapter whose activations overflow gives NaN scores: its requests (sampled or greedy) fail with an
    error that says so; greedy and sampled requests sharing their batch are served as usual."""
    url, refs, engine = served["url"], served["refs"], served["engine"]
    calls = Calls(url)
    with paused(engine):
        for i in range(3):
            calls.post(f"greedy{i}", "/v1/completions", completion(model="qv4", prompt=PROMPTS[i]))
        calls.post("sampled", "/v1/completions", completion(prompt=PROMPTS[1], temperature=1.0, seed=3, n=2))
        calls.post("huge-sampled", "/v1/completions", completion(model="huge", prompt="x", temperature=0.7))
        calls.post("huge-greedy", "/v1/completions", completion(model="huge", prompt="x"))
        deadline_poll(lambda: engine.queued() == 7, what="7 rows queued")
    out = calls.results()
    for i in range(3):
        assert text_of(out[f"greedy{i}"]) == [refs[("qv4", i)]]
    assert len(text_of(out["sampled"])) == 2
    for key in ("huge-sampled", "huge-greedy"):
        assert out[key].status_code == 500, (key, out[key].text)
        assert "not finite" in out[key].json()["error"]["message"]
    deadline_poll(lambda: _idle(engine), what="engine idle")
    assert _adapter_refs(engine).get("huge", 0) == 0


def test_sampler_gives_each_row_its_own_outcome() -> None:
    """``choose`` directly: rows with NaN, +inf or only -inf scores are reported, not sampled; a sampled row
    whose finite scores overflow at its temperature takes the argmax; the other rows are what they would be
    alone (greedy: the argmax; sampled: the same draw from the same seed)."""
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    logits[1, 3] = float("nan")
    logits[2, 7] = float("inf")
    logits[3] = float("-inf")
    logits[4, 9] = 3e37  # finite, but infinite once divided by 1e-2
    temps, top_p = [0.0, 1.0, 0.0, 0.7, 1e-2, 0.9], [1.0, 1.0, 1.0, 1.0, 1.0, 0.8]
    rows = [Sampling(t, top_p=p, generator=torch.Generator().manual_seed(5) if t > 0 else None)
            for t, p in zip(temps, top_p, strict=True)]
    tokens, broken = choose(logits, rows)
    assert broken == [1, 2, 3]
    assert int(tokens[0]) == int(logits[0].argmax()) and int(tokens[4]) == 9
    alone, none = choose(logits[5:], [Sampling(0.9, top_p=0.8, generator=torch.Generator().manual_seed(5))])
    assert none == [] and int(tokens[5]) == int(alone[0])
    tokens, broken = choose(logits[:1], [Sampling(1e-300)])  # below the floor: greedy, no generator needed
    assert broken == [] and int(tokens[0]) == int(logits[0].argmax())


# --- 2. an error while a batch starts answers everyone and frees the adapter

def test_startup_refuses_a_tokenizer_larger_than_the_model_vocabulary(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"50257.*500|500.*50257"):
        build_engine(tiny_llama(vocab=500), gpt2_tokenizer(padding_side="left"), tmp_path)


def test_prompt_ids_are_checked_against_the_model_embedding_rows(served) -> None:
    url = served["url"]
    ok = httpx.post(url + "/v1/completions", json=completion(prompt=[5, ROWS - 1], max_tokens=2), timeout=TIMEOUT)
    assert ok.status_code == 200, ok.text  # a real input row of the model, past the tokenizer's ids
    bad = httpx.post(url + "/v1/completions", json=completion(prompt=[5, ROWS], max_tokens=2), timeout=TIMEOUT)
    assert bad.status_code in (400, 422) and bad.json()["error"]["param"] == "prompt"
    assert str(ROWS - 1) in bad.json()["error"]["message"]


def test_failed_prefill_answers_every_request_and_releases_the_adapter(served, monkeypatch, caplog) -> None:
    """A prefill that raises (as out of memory would) for one row: that request gets an error, the rows
    started with it are served, nobody hangs, and the adapter can be unloaded afterwards."""
    url, refs, engine = served["url"], served["refs"], served["engine"]
    poison = 7  # token id of "(": the prefill of any batch holding it fails
    real_prefill = engine.lm.prefill

    def prefill(ids: torch.Tensor, mask: torch.Tensor, headroom: int = 64):
        if bool((ids == poison).any()):
            raise RuntimeError("simulated out of memory")
        return real_prefill(ids, mask, headroom=headroom)

    monkeypatch.setattr(engine.lm, "prefill", prefill)
    calls = Calls(url)
    with paused(engine):
        for i in range(3):
            calls.post(f"ok{i}", "/v1/completions", completion(model="qv4", prompt=PROMPTS[i]))
        calls.post("poison", "/v1/completions", completion(model="qv4", prompt=[5, poison, 9], n=2))
        deadline_poll(lambda: engine.queued() == 5, what="5 rows queued")
    out = calls.results()
    for i in range(3):
        assert text_of(out[f"ok{i}"]) == [refs[("qv4", i)]]
    assert out["poison"].status_code == 500 and "simulated out of memory" in out["poison"].text
    assert "simulated out of memory" in caplog.text  # logged, not only answered
    deadline_poll(lambda: _idle(engine), what="engine idle")
    assert _adapter_refs(engine)["qv4"] == 0
    health = httpx.get(url + "/health", timeout=TIMEOUT).json()
    assert health["queued_rows"] == 0
    unload = httpx.post(url + "/v1/adapters/unload", json={"name": "qv4"}, timeout=TIMEOUT)
    assert unload.status_code == 200 and unload.json()["unloaded"] is True


def test_adapter_read_that_cannot_start_fails_its_requests_only(served, monkeypatch) -> None:
    """The reader raising when asked (e.g. its thread pool is gone) fails the requests for that adapter; the
    engine thread survives and serves the rest."""
    url, refs, engine = served["url"], served["refs"], served["engine"]
    real_read_async = engine.registry.read_async

    def read_async(name: str, done) -> None:
        if name == "qv4b":
            raise RuntimeError("reader unavailable")
        real_read_async(name, done)

    monkeypatch.setattr(engine.registry, "read_async", read_async)
    r = httpx.post(url + "/v1/completions", json=completion(model="qv4b", prompt="hi"), timeout=TIMEOUT)
    assert r.status_code == 500 and "reader unavailable" in r.text
    r = httpx.post(url + "/v1/adapters/load", json={"name": "qv4b"}, timeout=TIMEOUT)
    assert r.status_code == 500 and "reader unavailable" in r.text
    r = httpx.post(url + "/v1/completions", json=completion(prompt=PROMPTS[1]), timeout=TIMEOUT)
    assert text_of(r) == [refs[("tiny", 1)]]
    assert engine._thread.is_alive()


def test_a_cancelled_unload_future_does_not_stop_the_engine(served) -> None:
    """A client that goes away while waiting cancels the future it awaited (``asyncio.wrap_future``); the
    engine settling it later must not raise on its thread: the other unload waiting with it is answered and
    the engine goes on serving."""
    url, refs, engine = served["url"], served["refs"], served["engine"]
    assert httpx.post(url + "/v1/adapters/load", json={"name": "qv4"}, timeout=TIMEOUT).status_code == 200
    calls = Calls(url)
    with paused(engine):
        abandoned = engine.unload("qv4")
        calls.post("unload", "/v1/adapters/unload", {"name": "qv4"})
        deadline_poll(lambda: len(engine._commands) == 2, what="both unloads queued")
        assert abandoned.cancel()
    assert calls.results()["unload"].json() == {"name": "qv4", "unloaded": True}
    r = httpx.post(url + "/v1/completions", json=completion(model="qv4", prompt=PROMPTS[2]), timeout=TIMEOUT)
    assert text_of(r) == [refs[("qv4", 2)]]


# --- 3. a client that went away stops its rows

def _send_raw(url: str, body: bytes) -> socket.socket:
    parsed = urlparse(url)
    sock = socket.create_connection((parsed.hostname, parsed.port), timeout=TIMEOUT)
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {parsed.hostname}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock.sendall(head + body)
    return sock


def test_disconnected_non_streaming_clients_stop_generating(served) -> None:
    url, engine = served["url"], served["engine"]
    body = b'{"model": "tiny", "prompt": "Hello world", "max_tokens": 400, "temperature": 0}'
    socks = [_send_raw(url, body) for _ in range(4)]
    deadline_poll(lambda: engine._live is not None and len(engine._live.rows) == 4
                  and all(r.tokens for r in engine._live.rows), what="4 rows generating")
    rows = list(engine._live.rows)
    for sock in socks:
        sock.close()
    deadline_poll(lambda: _idle(engine), seconds=30, what="the abandoned rows to stop")
    assert max(len(r.tokens) for r in rows) < 400  # dropped once the client left, not run to the end


# --- 4. a request larger than the queue can ever hold is not "retry later"

def test_request_larger_than_the_queue_is_413_while_a_full_queue_is_503(served) -> None:
    url, engine = served["url"], served["engine"]
    r = httpx.post(url + "/v1/completions", json=completion(prompt=["a", "b"], n=9), timeout=TIMEOUT)  # 18 > 16
    assert r.status_code == 413, r.text
    assert "16" in r.json()["error"]["message"]
    calls = Calls(url)
    with paused(engine):
        calls.post("fills", "/v1/completions", completion(prompt=["a", "b"], n=8, max_tokens=2))
        deadline_poll(lambda: engine.queued() == 16, what="queue full")
        r = httpx.post(url + "/v1/completions", json=completion(prompt="c", max_tokens=2), timeout=TIMEOUT)
        assert r.status_code == 503, r.text
    assert len(text_of(calls.results()["fills"])) == 16


# --- the same classes of bug in classification

@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Iterator[RunningServer]:
    torch.manual_seed(1)
    config = BertConfig(vocab_size=50257, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=3, pad_token_id=EOS)
    model = BertForSequenceClassification(config).eval()
    root = tmp_path_factory.mktemp("nlu")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=32, init_lora_weights=False), "sst")
    lorakit.save_adapter(model, root / "sst", "sst")
    lorakit.delete_adapter(model, "sst")
    server = serve_in_thread(build_engine(model, gpt2_tokenizer(), root, max_loaded=2, max_batch=2), "tiny-bert")
    yield server
    server.stop()


def _classify(url: str, model: str, texts: list[str]) -> httpx.Response:
    return httpx.post(url + "/v1/classify", json={"model": model, "input": texts}, timeout=TIMEOUT)


def test_classify_job_longer_than_a_forward_chunk_gets_every_row(classifier) -> None:
    texts = [f"text number {i}" for i in range(11)]  # max_batch 2: 8 rows per forward pass
    whole = _classify(classifier.url, "sst", texts)
    assert whole.status_code == 200, whole.text
    assert [row["index"] for row in whole.json()["data"]] == list(range(11))
    alone = [_classify(classifier.url, "sst", [t]).json()["data"][0]["scores"] for t in texts[8:]]
    for got, expected in zip(whole.json()["data"][8:], alone, strict=True):
        assert got["scores"] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_classify_failure_of_one_job_answers_everyone(classifier) -> None:
    engine = classifier.engine
    poison = 7
    texts = ["a fine film", "dull and long"]
    expected = _classify(classifier.url, "sst", texts).json()["data"]

    def hook(module, args, kwargs):
        if bool((kwargs["input_ids"] == poison).any()):
            raise RuntimeError("simulated forward failure")

    handle = engine.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        calls = Calls(classifier.url)
        with paused(engine):
            calls.post("ok", "/v1/classify", {"model": "sst", "input": texts})
            calls.post("poison", "/v1/classify", {"model": "tiny-bert", "input": ["("]})
            deadline_poll(lambda: engine.queued() == 2, what="2 jobs queued")
        out = calls.results()
    finally:
        handle.remove()
    assert out["ok"].status_code == 200, out["ok"].text
    for got, want in zip(out["ok"].json()["data"], expected, strict=True):
        assert got["scores"] == pytest.approx(want["scores"], rel=1e-4, abs=1e-5)
    assert out["poison"].status_code == 500 and "simulated forward failure" in out["poison"].text
    deadline_poll(lambda: engine.queued() == 0 and all(s.refs == 0 for s in engine.pool.loaded.values()),
                  what="no adapter held")



def test_classify_job_without_tokens_is_refused_when_queued(classifier) -> None:
    """The engine's own check (the HTTP schema refuses empty texts before it): a job with no inputs, or an
    input of no tokens, is refused when submitted rather than hanging or failing in the batch it joins."""
    engine = classifier.engine
    with pytest.raises(RequestRejected, match="input") as caught:
        engine.classify("sst", [])
    assert caught.value.param == "input"
    with pytest.raises(RequestRejected, match=r"input\[1\]"):
        engine.classify("sst", [[5, 6], []])
    assert engine.queued() == 0
