"""The decoding loops for one batch of prompts: greedy / sampling, and beam search.

Both keep per-step work to one forward call and a handful of tensor operations. Rows (greedy, sampling)
or inputs (beam search) that are done leave the batch and the KV cache at once, so the cost of a batch
follows its average output length rather than its longest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import DecodeConfig
from .logits import NGramBlocker, RowSampler, filter_scores
from .runner import CausalLM, left_pad, select_rows

_DEAD = -1.0e9  # HF's score for "cannot be chosen"; kept identical so ties and sums agree with HF


def _grow(mask: torch.Tensor) -> torch.Tensor:
    return torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)


def decode_batch(lm: CausalLM, prompts: Sequence[Sequence[int]], config: DecodeConfig, eos: Sequence[int],
                 pad_id: int, keys: Sequence[int] | None = None) -> list[list[int]]:
    """New tokens for each prompt (EOS not included). ``keys`` name each prompt's random stream (sampling)."""
    if config.strategy == "beam":
        return beam_search(lm, prompts, config, eos, pad_id)
    return greedy_or_sample(lm, prompts, config, eos, pad_id, keys)


def greedy_or_sample(lm: CausalLM, prompts: Sequence[Sequence[int]], config: DecodeConfig, eos: Sequence[int],
                     pad_id: int, keys: Sequence[int] | None = None) -> list[list[int]]:
    """Greedy (argmax) or sampled decoding; a row stops at its first EOS and leaves the batch."""
    ids, mask = left_pad(prompts, pad_id, lm.device)
    logits, cache, positions = lm.prefill(ids, mask)
    blocker = NGramBlocker(config.no_repeat_ngram_size, ids, mask, config.max_new_tokens) \
        if config.no_repeat_ngram_size else None
    sampler = RowSampler(config.seed, list(keys if keys is not None else range(len(prompts)))) \
        if config.strategy == "sample" else None
    eos_ids = torch.tensor(list(eos) if config.stop_at_eos else [], dtype=torch.long, device=lm.device)
    rows = list(range(len(prompts)))  # which prompt each live row belongs to
    outputs: list[list[int]] = [[] for _ in prompts]
    for step in range(config.max_new_tokens):
        if blocker is not None:
            blocker.ban(logits)
        if sampler is not None:
            tokens = sampler.sample(filter_scores(logits, config.temperature, config.top_k, config.top_p))
        else:
            tokens = logits.argmax(dim=-1)
        finished = torch.isin(tokens, eos_ids)
        for row, token, done in zip(rows, tokens.tolist(), finished.tolist(), strict=True):
            if not done:
                outputs[row].append(token)
        if step + 1 == config.max_new_tokens:
            break
        if finished.any():
            keep = (~finished).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            tokens, mask, positions = tokens[keep], mask[keep], positions[keep]
            select_rows(cache, keep)
            kept = keep.tolist()
            rows = [rows[i] for i in kept]
            if blocker is not None:
                blocker.select(keep)
            if sampler is not None:
                sampler.select(kept)
        if blocker is not None:
            blocker.append(tokens)
        mask, positions = _grow(mask), positions + 1
        logits = lm.step(tokens, cache, mask, positions)
    return outputs


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b, j], ...]``: pick beams per input (HF's ``_gather_beams``)."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def beam_search(lm: CausalLM, prompts: Sequence[Sequence[int]], config: DecodeConfig, eos: Sequence[int],
                pad_id: int) -> list[list[int]]:
    """Beam search with HF's scoring, stopping rules and tie order (its vectorised ``_beam_search``): the best
    finished hypothesis of each prompt.

    Differences that do not change results: the prompt is run once and its cache copied to the beams (HF
    runs it ``num_beams`` times); an input leaves the batch once its finished beams can no longer change
    (HF keeps computing it until the whole batch is done).
    """
    batch, beams, horizon = len(prompts), config.num_beams, config.max_new_tokens
    lp, early = config.length_penalty, config.early_stopping
    ids, mask = left_pad(prompts, pad_id, lm.device)
    logits, cache, positions = lm.prefill(ids, mask)
    logits = logits.repeat_interleave(beams, dim=0)
    cache.batch_repeat_interleave(beams)
    mask, positions = mask.repeat_interleave(beams, dim=0), positions.repeat_interleave(beams, dim=0)
    blocker = NGramBlocker(config.no_repeat_ngram_size, ids.repeat_interleave(beams, dim=0), mask, horizon) \
        if config.no_repeat_ngram_size else None

    device = logits.device
    eos_ids = torch.tensor(list(eos) if config.stop_at_eos else [], dtype=torch.long, device=device)
    keep_k = max(2, 1 + len(eos_ids)) * beams  # enough candidates that `beams` of them did not just end
    in_top = torch.arange(keep_k, device=device) < beams  # only the top `beams` candidates may finish
    items = list(range(batch))  # which prompt each live input is
    running = torch.zeros((batch, beams, horizon), dtype=torch.long, device=device)
    running_scores = torch.zeros((batch, beams), device=device)
    running_scores[:, 1:] = _DEAD  # all beams start identical: only the first may expand at step 0
    finished = torch.zeros_like(running)
    finished_scores = torch.full((batch, beams), _DEAD, device=device)
    finished_lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)
    is_finished = torch.zeros((batch, beams), dtype=torch.bool, device=device)
    improvable = torch.ones((batch,), dtype=torch.bool, device=device)
    stops = set(eos_ids.tolist())
    results: list[list[int]] = [[] for _ in prompts]

    for t in range(horizon):  # t tokens generated so far
        live = len(items)
        log_probs = torch.log_softmax(logits, dim=-1)
        if blocker is not None:
            blocker.ban(log_probs)
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(live, beams, vocab) + running_scores[:, :, None]).view(live, beams * vocab)
        top_scores, top_index = torch.topk(totals, keep_k)
        source, top_tokens = top_index // vocab, top_index % vocab
        candidates = _gather(running, source)
        candidates[:, :, t] = top_tokens
        ended = torch.isin(top_tokens, eos_ids) if t + 1 < horizon else torch.ones_like(in_top).expand_as(source)

        # Running beams: the best candidates that did not end.
        open_scores = top_scores + ended.to(torch.float32) * _DEAD
        chosen = torch.topk(open_scores, beams).indices
        running, running_scores = _gather(candidates, chosen), _gather(open_scores, chosen)
        chosen_source, chosen_tokens = _gather(source, chosen), _gather(top_tokens, chosen)

        # Finished beams: merge the candidates that just ended (top `beams` only) with the kept ones.
        just_ended = ended & in_top[None, :]
        normalised = top_scores / ((t + 1) ** lp)
        full = is_finished.all(dim=1, keepdim=True) & (early is True)
        normalised = normalised + full.to(torch.float32) * _DEAD
        normalised = normalised + (~improvable[:, None]).to(torch.float32) * _DEAD
        normalised = normalised + (~just_ended) * _DEAD
        merged_scores = torch.cat((finished_scores, normalised), dim=1)
        best = torch.topk(merged_scores, beams).indices
        finished = _gather(torch.cat((finished, candidates), dim=1), best)
        finished_scores = _gather(merged_scores, best)
        lengths = torch.full_like(source, t + 1)
        finished_lengths = _gather(torch.cat((finished_lengths, lengths), dim=1), best)
        is_finished = _gather(torch.cat((is_finished, just_ended), dim=1), best)

        # Could a running beam still beat the worst finished one? (HF's early-stop heuristic.)
        best_length = horizon if early == "never" and lp > 0.0 else t + 1
        best_possible = running_scores[:, :1] / (best_length ** lp)
        worst = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, _DEAD)
        improvable = improvable & (best_possible > worst).any(dim=1)
        done = ~improvable | (is_finished.all(dim=1) & (early is True))
        if t + 1 == horizon:
            done = torch.ones_like(done)

        for i in done.nonzero()[:, 0].tolist():
            tokens = finished[i, 0, :finished_lengths[i, 0]].tolist()
            if tokens and tokens[-1] in stops:
                tokens.pop()
            results[items[i]] = tokens
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero()[:, 0]
            items = [items[i] for i in keep.tolist()]
            running, running_scores, finished, finished_scores = (
                running[keep], running_scores[keep], finished[keep], finished_scores[keep])
            finished_lengths, is_finished, improvable = finished_lengths[keep], is_finished[keep], improvable[keep]
            chosen_source, chosen_tokens = chosen_source[keep], chosen_tokens[keep]
            origin = keep[:, None] * beams + chosen_source  # flat row each new beam continues
        else:
            origin = torch.arange(live, device=device)[:, None] * beams + chosen_source
        origin = origin.reshape(-1)
        select_rows(cache, origin)
        mask, positions = _grow(mask[origin]), positions[origin] + 1
        next_tokens = chosen_tokens.reshape(-1)
        if blocker is not None:
            blocker.select(origin)
            blocker.append(next_tokens)
        logits = lm.step(next_tokens, cache, mask, positions)
    return results
