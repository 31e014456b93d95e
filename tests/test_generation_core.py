"""One generation core: the same prompt, adapter, seed and settings give the same tokens through
``lorakit generate`` (the command line, in-process), the Python API and the HTTP server (real uvicorn on
127.0.0.1), greedy and sampled, whatever else shares the server's batch.

A tiny random Llama with GPT-2's vocabulary is saved as a model folder (GPT-2 tokenizer included) and two
adapters as adapter folders. The model gets a second EOS token that the greedy decode of the first prompt
reaches after a few tokens, so stopping at EOS is compared, not only stopping at the token limit. All three
paths see the prompts as the same token ids: the command line with ``--raw`` (no task prompt format) and the
API and the server tokenize without special tokens (checked below). The command line runs the adapter
unmerged (``--no-merge``), as the API and the server do: a merged adapter computes the same function with
other rounding, which could flip a near tie.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from engine_fixtures import deadline_poll, paused
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit
from lorakit.cli import main as lorakit_main
from lorakit.decode import DecodeConfig, eos_ids, generate, generate_ids, stream_decode
from lorakit.decode.runner import CausalLM
from lorakit.decode.sampling import Sampling, choose, filter_scores, row_generator
from lorakit.models import gpt2_tokenizer, load_model
from lorakit.serve.server import build_engine, serve_in_thread

EOS = 50256
MAX = 8  # new tokens per row, the same limit on every path
PROMPTS = ("Hello world", "The cat sat on the mat and", "name : Eagle | food : Chinese")
TIMEOUT = 30.0

# (name, CLI flags, DecodeConfig fields, request fields): one setting spelt the three ways
SETTINGS = {
    "greedy": ([], {"strategy": "greedy"}, {"temperature": 0}),
    "sampled": (["--strategy", "sample", "--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--seed", "1234"],
                {"strategy": "sample", "temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 1234},
                {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 1234}),
    "hot-negative-seed": (["--strategy", "sample", "--temperature", "1.3", "--seed", "-5"],  # taken modulo 2**64
                          {"strategy": "sample", "temperature": 1.3, "seed": -5},
                          {"temperature": 1.3, "seed": -5}),
}


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict[str, Any]]:
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("core")
    model, tokenizer = tiny_llama(), gpt2_tokenizer(padding_side="left")
    base = tmp / "base"
    model.save_pretrained(base)  # before any adapter touches the module tree
    tokenizer.save_pretrained(base)
    root = tmp / "adapters"
    configs = {"qv4": lorakit.LoraConfig(r=4, lora_alpha=64, init_lora_weights=False),
               "all8": lorakit.LoraConfig(r=8, lora_alpha=128, init_lora_weights=False,
                                          target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])}
    for name, config in configs.items():
        lorakit.add_adapter(model, config, name)
        lorakit.save_adapter(model, root / name, name)
    # a second stop token: the third token qv4's greedy decode writes for the first prompt
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    lorakit.set_active_adapters(model, ["qv4"])
    first = generate_ids(model, encoded[:1], DecodeConfig(max_new_tokens=MAX), eos_token_id=EOS, pad_token_id=EOS)
    stop = first[0][2]
    for name in configs:
        lorakit.delete_adapter(model, name)
    model.generation_config.eos_token_id = [EOS, stop]
    model.generation_config.save_pretrained(base)
    (tmp / "inputs.txt").write_text("".join(p + "\n" for p in PROMPTS), encoding="utf-8")

    api_model, api_tokenizer = load_model(str(base), padding_side="left")  # what the command line loads
    lorakit.load_adapter(api_model, root / "qv4")
    engine = build_engine(model, tokenizer, root, max_loaded=3, max_batch=8)
    server = serve_in_thread(engine, "tiny")
    yield {"tmp": tmp, "base": base, "root": root, "stop": stop, "encoded": encoded, "api": (api_model, api_tokenizer),
           "engine": engine, "url": server.url, "tokenizer": tokenizer}
    server.stop()


def cli_lines(world: dict[str, Any], flags: list[str], name: str) -> list[str]:
    output = world["tmp"] / f"cli-{name}.txt"
    code = lorakit_main(["generate", "--model", str(world["base"]), "--adapter", str(world["root"] / "qv4"),
                         "--no-merge", "--input", str(world["tmp"] / "inputs.txt"), "--raw", "--output", str(output),
                         "--max-new-tokens", str(MAX), "--batch-size", "2", "--device", "cpu", "--no-progress",
                         *flags])
    assert code == 0
    return Path(output).read_text(encoding="utf-8").splitlines()


def api_ids(world: dict[str, Any], fields: dict[str, Any]) -> list[list[int]]:
    model, tokenizer = world["api"]
    encoded = tokenizer(list(PROMPTS), add_special_tokens=False)["input_ids"]
    assert encoded == world["encoded"]  # the folder's tokenizer gives the server's ids
    return generate_ids(model, encoded, DecodeConfig(max_new_tokens=MAX, **fields),
                        eos_token_id=eos_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id, batch_size=3)


def complete(url: str, **body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json={"model": "qv4", "max_tokens": MAX, **body}, timeout=TIMEOUT)


def choices(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return sorted(response.json()["choices"], key=lambda c: c["index"])


def check_server_reply(world: dict[str, Any], response: httpx.Response, ids: list[list[int]]) -> None:
    """The server's texts, finish reasons and token counts are those of ``ids`` (token ids per prompt)."""
    decode = world["tokenizer"].decode
    got = choices(response)
    assert [c["text"] for c in got] == [decode(t, skip_special_tokens=True) for t in ids]
    assert [c["finish_reason"] for c in got] == ["length" if len(t) == MAX else "stop" for t in ids]
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == sum(len(t) for t in ids)
    assert usage["prompt_tokens"] == sum(len(p) for p in world["encoded"])



def post_in_thread(url: str, out: dict[str, Any], key: str, **body: Any) -> threading.Thread:
    def run() -> None:
        try:
            out[key] = complete(url, **body)
        except BaseException as err:  # reported by the caller's assertions
            out[key] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread



@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_command_line_api_and_server_give_the_same_tokens(world, setting: str) -> None:
    flags, fields, body = SETTINGS[setting]
    ids = api_ids(world, fields)
    decode = world["tokenizer"].decode
    texts = [decode(t, skip_special_tokens=True) for t in ids]
    assert cli_lines(world, flags, setting) == [" ".join(t.split()) for t in texts]
    model, tokenizer = world["api"]
    assert generate(model, tokenizer, list(PROMPTS), DecodeConfig(max_new_tokens=MAX, **fields),
                    progress=False) == [t.strip() for t in texts]
    check_server_reply(world, complete(world["url"], prompt=list(PROMPTS), **body), ids)
    if setting == "greedy":  # EOS ends a row on every path, not only the token limit
        assert len(ids[0]) < MAX and world["stop"] not in ids[0]
    else:
        assert ids != api_ids(world, SETTINGS["greedy"][1])  # it did sample


def test_server_tokens_do_not_depend_on_what_shares_the_batch(world) -> None:
    """The sampled and greedy requests of the test above, sent into a batch that also holds other adapters,
    other settings, several choices and a row already running (the new rows are stacked onto it)."""
    url, engine = world["url"], world["engine"]
    expected = {name: api_ids(world, SETTINGS[name][1]) for name in ("greedy", "sampled")}
    out: dict[str, Any] = {}
    threads = [post_in_thread(url, out, "running", model="all8", prompt="A long one", max_tokens=100,
                              temperature=0.7, seed=9)]
    deadline_poll(lambda: engine._live is not None, what="the first row to run")
    with paused(engine, TIMEOUT):
        assert engine._live is not None  # still running: the rows below are stacked onto it
        for name in ("greedy", "sampled"):
            threads.append(post_in_thread(url, out, name, prompt=list(PROMPTS), **SETTINGS[name][2]))
        threads += [post_in_thread(url, out, "base", model="tiny", prompt=PROMPTS[1], temperature=1.0, seed=3, n=2),
                    post_in_thread(url, out, "all8", model="all8", prompt=list(PROMPTS[:2]), temperature=0),
                    post_in_thread(url, out, "other-k", prompt=PROMPTS[2], temperature=1.9, top_k=5, top_p=0.5,
                                   seed=1234)]
        deadline_poll(lambda: engine.queued() == 11, what="11 rows queued")  # more than max_batch: some join later
    for thread in threads:
        thread.join(TIMEOUT + 5)
    for name, ids in expected.items():
        check_server_reply(world, out[name], ids)
    for key in ("running", "base", "all8", "other-k"):
        assert isinstance(out[key], httpx.Response) and out[key].status_code == 200, (key, out[key])


def test_top_k_reaches_the_sampler(world) -> None:
    url = world["url"]
    greedy = choices(complete(url, prompt=list(PROMPTS), temperature=0))
    one = choices(complete(url, prompt=list(PROMPTS), temperature=1.5, top_k=1, seed=2))
    assert [c["text"] for c in one] == [c["text"] for c in greedy]
    off = [choices(complete(url, prompt=PROMPTS[0], temperature=1.5, top_k=k, seed=2)) for k in (0, -1)]
    assert off[0] == off[1]  # vLLM's -1 is "off", as 0
    assert complete(url, prompt="x", top_k=-2).status_code == 422


def test_per_row_settings_equal_each_row_alone() -> None:
    """Filtering and sampling row by row: a batch of rows with different temperatures, top-k and top-p gives
    each row exactly what it gets alone, bit for bit (the scores) and token for token."""
    scores = torch.randn(6, 300, generator=torch.Generator().manual_seed(0))
    temps, ks, ps = [0.7, 1.0, 1.3, 0.7, 2.0, 1.0], [0, 5, 10, 0, 40, 300], [1.0, 1.0, 0.5, 0.8, 0.9, 1e-6]
    batch = filter_scores(scores, temps, ks, ps)
    for j in range(len(temps)):
        assert torch.equal(batch[j:j + 1], filter_scores(scores[j:j + 1], temps[j], ks[j], ps[j])), j
    rows = [Sampling(t, k, p, row_generator(100 + j)) for j, (t, k, p) in enumerate(zip(temps, ks, ps, strict=True))]
    rows[3] = Sampling()  # a greedy row among sampled ones
    tokens, broken = choose(scores.clone(), rows)
    assert broken == []
    for j, row in enumerate(rows):
        alone = Sampling(row.temperature, row.top_k, row.top_p, row_generator(100 + j) if row.sampled else None)
        assert int(tokens[j]) == int(choose(scores[j:j + 1].clone(), [alone])[0][0]), j
    assert int(tokens[3]) == int(scores[3].argmax())


class _PoisonedLM(CausalLM):
    """A model whose scores are NaN for every prompt holding token ``POISON`` (as an overflowing adapter's)."""

    POISON = 7

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, headroom: int = 64):
        logits, cache, positions = super().prefill(ids, mask, headroom=headroom)
        logits[(ids == self.POISON).any(dim=1)] = float("nan")
        return logits, cache, positions


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_decoding_ends_a_row_with_broken_scores_alone(strategy: str, caplog) -> None:
    """As in the server, a row whose scores are not finite ends there (with a warning naming its input)
    and the rows sharing its batch decode as they would without it."""
    torch.manual_seed(0)
    model = tiny_llama()
    prompts = [[5, 9, 11], [5, _PoisonedLM.POISON, 9], [3, 4, 5, 6], [8, 8]]
    config = DecodeConfig(strategy, max_new_tokens=6, seed=4)
    with caplog.at_level("WARNING", logger="lorakit.decode"), torch.inference_mode():
        out = stream_decode(_PoisonedLM(model), prompts, range(len(prompts)), config, [EOS], EOS, slots=4)
        clean = stream_decode(CausalLM(model), prompts, [0, 2, 3], config, [EOS], EOS, slots=4)  # same streams
    assert out[1] == [] and "input 1" in caplog.text and "not finite" in caplog.text
    assert [out[i] for i in (0, 2, 3)] == [clean[i] for i in (0, 2, 3)]
    assert all(len(clean[i]) == 6 for i in (0, 2, 3))  # they ran to the limit, past the broken row's end
