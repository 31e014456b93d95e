"""End to end on the real packaged model: SmolLM2-135M served with two adapters, called with the openai client
from concurrent threads; each answer equals lorakit's own greedy decoding with that adapter alone."""

from __future__ import annotations

import threading

import openai
import pytest
import torch

import lorakit
from lorakit.decode.api import eos_ids, generate_ids
from lorakit.decode.config import DecodeConfig
from lorakit.models import ModelNotFoundError, load_model
from lorakit.serve.server import build_engine, serve_in_thread


def test_smollm2_mixed_adapters_over_http(tmp_path) -> None:
    try:
        model, tokenizer = load_model("smollm2-135m", padding_side="left")
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    model.eval()
    torch.manual_seed(0)
    names = ("e2e", "all")
    configs = {"e2e": lorakit.LoraConfig(r=4, lora_alpha=32, init_lora_weights=False),
               "all": lorakit.LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"],
                                         init_lora_weights=False)}
    for name in names:
        lorakit.add_adapter(model, configs[name], name)
        lorakit.save_adapter(model, tmp_path / name, name)
    prompts = ["name : The Eagle | food : Chinese | area : riverside\n", "The capital of France is"]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    refs = {}
    eos = eos_ids(model, tokenizer)
    for name in (None, *names):
        lorakit.set_active_adapters(model, [name] if name else [])
        ids = generate_ids(model, encoded, DecodeConfig(max_new_tokens=8), eos_token_id=eos,
                           pad_token_id=tokenizer.pad_token_id)
        refs[name] = [tokenizer.decode(t, skip_special_tokens=True) for t in ids]
    assert len({tuple(v) for v in refs.values()}) == 3  # the adapters change the text
    for name in names:
        lorakit.delete_adapter(model, name)

    server = serve_in_thread(build_engine(model, tokenizer, tmp_path, max_loaded=2), "smollm2-135m")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        results: dict[tuple[str, int], str] = {}

        def ask(model_name: str, i: int) -> None:
            results[(model_name, i)] = client.completions.create(
                model=model_name, prompt=prompts[i], max_tokens=8, temperature=0).choices[0].text

        threads = [threading.Thread(target=ask, args=(m, i)) for m in ("smollm2-135m", *names) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (model_name, i), text in results.items():
            assert text == refs[None if model_name == "smollm2-135m" else model_name][i], (model_name, i)
        assert len(results) == 6
    finally:
        server.stop()
