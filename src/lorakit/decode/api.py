"""Decoding many prompts: sort by length, batch, decode, restore the input order.

Why sort: prompts of similar length share a batch, so little of each forward pass is padding; the
outputs come back in input order whatever the batching.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import DecodeConfig
from .runner import CausalLM
from .search import beam_hypotheses, stream_decode


def eos_ids(model: nn.Module | None = None, tokenizer=None) -> list[int]:
    """The stop tokens: the tokenizer's EOS plus the model's ``generation_config.eos_token_id`` (one or many)."""
    found: list[int] = []
    generation = getattr(model, "generation_config", None)
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(generation, "eos_token_id", None)):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in found:
                found.append(int(token))
    return found


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off (a model straight from training would otherwise decode at random), then put back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of similar length, longest first (the memory peak, and a pessimistic
    progress estimate, come at the start rather than the end)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def generate_ids(model: nn.Module, prompts: Sequence[Sequence[int]], config: DecodeConfig | None = None, *,
                 eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
                 batch_size: int = 16, progress: bool = False, refill_at: int | None = None) -> list[list[int]]:
    """New token ids for each prompt (ids, no special tokens added), in input order, without the final EOS.

    ``batch_size`` counts prompts decoded at once (beam search runs ``batch_size * num_beams`` rows); prompts
    are batched by length. Greedy and sampling drop finished rows at once and, with ``refill_at``, admit the
    next prompts when that many slots are free (default: when the batch is done, the fastest on CPUs, where
    a step costs about the same for few rows as for many). ``eos_token_id`` defaults to the model's
    ``generation_config``; ``pad_token_id`` only fills masked positions.
    """
    return [hypotheses[0] for hypotheses in _decode(model, prompts, config or DecodeConfig(), eos_token_id,
                                                    pad_token_id, batch_size, progress, refill_at)]


def generate_hypotheses(model: nn.Module, tokenizer, prompts: Sequence[str], config: DecodeConfig, *,
                        batch_size: int = 16, progress: bool = True,
                        add_special_tokens: bool = False) -> list[list[str]]:
    """Beam search's finished hypotheses for each prompt (up to ``num_beams``, best first) as texts, in input
    order: the n-best lists a reranker chooses from. Prompts are tokenized as in ``generate``."""
    if config.strategy != "beam":
        raise ValueError(f"n-best lists come from beam search, not {config.strategy} decoding")
    found = _decode_texts(model, tokenizer, prompts, config, batch_size, progress, add_special_tokens)
    return [[_text(tokenizer, tokens) for tokens in hypotheses] for hypotheses in found]


def context_length(model: nn.Module) -> int | None:
    """The most positions the model takes (prompt + new tokens), from its config; None if it names none."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    """ValueError naming the first input whose tokens and ``max_new_tokens`` exceed the model's context: a
    model with learned positions (GPT-2) fails with an IndexError deep in its forward otherwise, after the
    inputs before it were decoded, and others decode past the length they were trained for."""
    context = context_length(model)
    if context is None:
        return
    for i, prompt in enumerate(prompts):
        if len(prompt) + max_new_tokens > context:
            raise ValueError(f"input {i + 1} is {len(prompt)} tokens; with max_new_tokens {max_new_tokens} that "
                             f"is {len(prompt) + max_new_tokens}, beyond the model's context of {context} tokens: "
                             "shorten it or lower max_new_tokens")


def _decode_texts(model: nn.Module, tokenizer, prompts: Sequence[str], config: DecodeConfig | None,
                  batch_size: int, progress: bool, add_special_tokens: bool) -> list[list[list[int]]]:
    """``_decode`` of text prompts, tokenized as training saw them, with the model's and tokenizer's stops."""
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    return _decode(model, encoded, config or DecodeConfig(), eos_ids(model, tokenizer), tokenizer.pad_token_id,
                   batch_size, progress, None)


def _text(tokenizer, tokens: list[int]) -> str:
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def _decode(model: nn.Module, prompts: Sequence[Sequence[int]], config: DecodeConfig,
            eos_token_id: int | Sequence[int] | None, pad_token_id: int | None, batch_size: int, progress: bool,
            refill_at: int | None) -> list[list[list[int]]]:
    """Each prompt's outputs, best first: beam search's finished hypotheses, or greedy's / sampling's one."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if eos_token_id is None:
        eos = eos_ids(model)
    else:
        eos = [int(t) for t in ([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id)]
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    prompts = [list(p) for p in prompts]
    check_context(model, prompts, config.max_new_tokens)
    outputs: list[list[list[int]]] = [[] for _ in prompts]
    lm = CausalLM(model)
    bar = _progress_bar(len(prompts), progress)
    try:
        with _eval_mode(model), torch.inference_mode():
            batches = length_batches([len(p) for p in prompts], batch_size)
            if config.strategy == "beam":
                for batch in batches:
                    results = beam_hypotheses(lm, [prompts[i] for i in batch], config, eos, pad)
                    for i, hypotheses in zip(batch, results, strict=True):
                        outputs[i] = hypotheses
                    if bar is not None:
                        bar.update(len(batch))
            else:
                order = [i for batch in batches for i in batch]
                outputs = [[tokens] for tokens in stream_decode(
                    lm, prompts, order, config, eos, pad, slots=batch_size,
                    on_done=(lambda i, tokens: bar.update(1)) if bar is not None else None, refill_at=refill_at)]
    finally:
        if bar is not None:
            bar.close()
    return outputs


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, unit="input", desc="generating", dynamic_ncols=True)


def generate(model: nn.Module, tokenizer, prompts: Sequence[str], config: DecodeConfig | None = None,
             batch_size: int = 16, progress: bool = True, add_special_tokens: bool = False) -> list[str]:
    """Decode each prompt; returns the new text only (special tokens dropped, whitespace stripped), in input
    order. Prompts are tokenized as training saw them (no special tokens added, by default)."""
    found = _decode_texts(model, tokenizer, prompts, config, batch_size, progress, add_special_tokens)
    return [_text(tokenizer, hypotheses[0]) for hypotheses in found]
