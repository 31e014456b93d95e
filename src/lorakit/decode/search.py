"""The decoding loops: greedy / sampling over a stream of prompts, and beam search over a batch.

Per step: one forward call and a handful of tensor operations. A finished row (greedy, sampling) or a
settled input (beam search) leaves the batch and the KV cache at once. Greedy and sampling can also admit
new prompts into freed slots (``refill_at``); by default they wait until the batch is empty, because on a
CPU a decoding step is bound by reading the weights (SmolLM2: ~55 ms for 1 to 16 rows), so an extra
prefill pass for a few new rows costs more than the steps it saves.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence

import torch

from .batch import LiveBatch, grow_mask, leading_padding, take_token
from .cache import drop_front, growable, reorder_tail, select_rows
from .config import DecodeConfig
from .logits import NGramBlocker
from .runner import CausalLM, left_pad
from .sampling import GREEDY, Sampling, row_generator, row_seed

log = logging.getLogger("lorakit.decode")

_DEAD = -1.0e9  # HF's score for "cannot be chosen"; kept identical so ties and sums agree with HF


def row_sampling(config: DecodeConfig, index: int) -> Sampling:
    """How input ``index`` picks its tokens under ``config``: the server builds the same from a request."""
    if config.strategy != "sample":
        return GREEDY
    return Sampling(config.temperature, config.top_k, config.top_p, row_generator(row_seed(config.seed, index)))


def stream_decode(lm: CausalLM, prompts: Sequence[Sequence[int]], order: Sequence[int], config: DecodeConfig,
                  eos: Sequence[int], pad_id: int, slots: int,
                  on_done: Callable[[int, list[int]], None] | None = None,
                  refill_at: int | None = None) -> list[list[int]]:
    """Greedy or sampled decoding of ``prompts`` (admitted in ``order``), at most ``slots`` rows at a time.

    Rows stop at EOS (not included in the output) or after ``max_new_tokens``. New prompts are admitted once
    ``refill_at`` slots are free (default: all of them, i.e. whole batches); caches whose layers cannot be
    merged (sliding-window models) always use whole batches. ``on_done(index, tokens)`` follows each prompt.
    A row whose scores are not finite (NaN, +inf) ends there, with a warning naming its input.
    """
    stops = set(eos) if config.stop_at_eos else set()
    queue = deque(order)
    outputs: list[list[int]] = [[] for _ in prompts]
    live: LiveBatch[int] | None = None
    refill_at = min(refill_at or slots, slots)
    while True:
        free = slots - (len(live) if live is not None else 0)
        if queue and (not live or (live.growable and free >= refill_at)):
            indices = [queue.popleft() for _ in range(min(free, len(queue)))]
            new = LiveBatch(lm, [prompts[i] for i in indices], indices, [row_sampling(config, i) for i in indices],
                            pad_id, headroom=config.max_new_tokens,
                            no_repeat_ngram_size=config.no_repeat_ngram_size)
            live = new if live is None else live.stack(new)
        if not live:
            return outputs
        tokens, broken = live.choose()
        keep = []
        for j, (row, token) in enumerate(zip(live.rows, tokens, strict=True)):
            if j in broken:
                log.warning("input %d: the model's next-token scores are not finite after %d tokens; its output "
                            "ends there", row, len(outputs[row]))
            elif take_token(token, outputs[row], config.max_new_tokens, stops) is None:
                keep.append(j)
                continue
            if on_done is not None:
                on_done(row, outputs[row])
        live.keep(keep)
        if live:
            live.step()


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor[b, index[b, j], ...]``: pick beams per input (HF's ``_gather_beams``)."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def beam_search(lm: CausalLM, prompts: Sequence[Sequence[int]], config: DecodeConfig, eos: Sequence[int],
                pad_id: int) -> list[list[int]]:
    """Beam search: the best finished hypothesis of each prompt, EOS not included (see ``beam_hypotheses``)."""
    return [hypotheses[0] for hypotheses in beam_hypotheses(lm, prompts, config, eos, pad_id)]


def beam_hypotheses(lm: CausalLM, prompts: Sequence[Sequence[int]], config: DecodeConfig, eos: Sequence[int],
                    pad_id: int) -> list[list[list[int]]]:
    """Beam search with HF's scoring, stopping rules and tie order (its vectorised ``_beam_search``): each
    prompt's finished hypotheses (up to ``num_beams``), best first, EOS not included; what HF returns with
    ``num_return_sequences=num_beams``. A reranker (``lorakit.decode.rerank``) can pick among them.

    Differences that do not change results: the prompt is run once and its cache copied to the beams (HF
    runs it ``num_beams`` times); moving beams copies only the generated part of the cache; an input leaves
    the batch once its finished beams can no longer change (HF computes it until the whole batch is done).
    """
    batch, beams, horizon = len(prompts), config.num_beams, config.max_new_tokens
    lp, early = config.length_penalty, config.early_stopping
    ids, mask = left_pad(prompts, pad_id, lm.device)
    logits, cache, positions = lm.prefill(ids, mask, headroom=horizon)
    shared = ids.shape[1]  # cache columns before this one are the prompt: equal for all beams of an input
    logits = logits.repeat_interleave(beams, dim=0)
    cache.batch_repeat_interleave(beams)
    mask, positions = mask.repeat_interleave(beams, dim=0), positions.repeat_interleave(beams, dim=0)
    blocker = NGramBlocker(config.no_repeat_ngram_size, ids.repeat_interleave(beams, dim=0), mask) \
        if config.no_repeat_ngram_size else None

    device = logits.device
    eos_ids = torch.tensor(list(eos) if config.stop_at_eos else [], dtype=torch.long, device=device)
    stops = set(eos_ids.tolist())
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
    results: list[list[list[int]]] = [[] for _ in prompts]

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
        ended = torch.isin(top_tokens, eos_ids) if t + 1 < horizon else torch.ones_like(top_tokens, dtype=torch.bool)

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
            break

        done_items = done.nonzero()[:, 0].tolist()
        for i in done_items:
            results[items[i]] = _ranked(finished, finished_lengths, is_finished, i, stops)
        if len(done_items) == live:
            return results
        origin = chosen_source + torch.arange(live, device=device)[:, None] * beams  # flat row each beam continues
        if done_items:  # drop settled inputs from every row-aligned tensor, then reorder beams within inputs
            keep = (~done).nonzero()[:, 0]
            items = [items[i] for i in keep.tolist()]
            running, running_scores, finished, finished_scores = (
                running[keep], running_scores[keep], finished[keep], finished_scores[keep])
            finished_lengths, is_finished, improvable = finished_lengths[keep], is_finished[keep], improvable[keep]
            chosen_source, chosen_tokens, origin = chosen_source[keep], chosen_tokens[keep], origin[keep]
            rows = (keep[:, None] * beams + torch.arange(beams, device=device)).reshape(-1)
            select_rows(cache, rows)
            mask, positions = mask[rows], positions[rows]
            lead = leading_padding(mask) if growable(cache) else 0
            if lead:
                mask, shared = mask[:, lead:], shared - lead
                drop_front(cache, lead)
            within = (chosen_source + torch.arange(len(items), device=device)[:, None] * beams).reshape(-1)
        else:
            within = origin.reshape(-1)
        reorder_tail(cache, within, shared)  # beams of an input share the prompt: move the generated part only
        next_tokens = chosen_tokens.reshape(-1)
        if blocker is not None:
            blocker.select(origin.reshape(-1))
            blocker.append(next_tokens)
        mask, positions = grow_mask(mask), positions + 1
        logits = lm.step(next_tokens, cache, mask, positions)

    for i in range(len(items)):
        results[items[i]] = _ranked(finished, finished_lengths, is_finished, i, stops)
    return results


def _ranked(finished: torch.Tensor, lengths: torch.Tensor, is_finished: torch.Tensor, item: int,
            stops: set[int]) -> list[list[int]]:
    """The finished hypotheses of live input ``item``, best first (they are kept sorted), each without its
    final EOS; at least the top slot, which a settled input always has filled."""
    hypotheses = []
    for j, (row, length, done) in enumerate(zip(finished[item].tolist(), lengths[item].tolist(),
                                                is_finished[item].tolist(), strict=True)):
        if j and not done:
            break
        tokens = row[:length]
        if tokens and tokens[-1] in stops:
            tokens.pop()
        hypotheses.append(tokens)
    return hypotheses
