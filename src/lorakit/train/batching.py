"""From (prompt, target) text pairs to padded batches, with as little padding as possible.

Batches are planned from a seed and the epoch alone (no global RNG), so a resumed or multi-process run
sees exactly the batches an uninterrupted single-process run would.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

IGNORE = -100


@dataclass(frozen=True)
class Sample:
    """Token ids of prompt + target; ``labels`` is -100 on the prompt so only the target is learned."""

    input_ids: list[int]
    labels: list[int]

    @cached_property  # read for every batch of every step: count once
    def target_tokens(self) -> int:
        """Tokens the loss predicts (a label at position 0 has no context and is never predicted)."""
        return sum(label != IGNORE for label in self.labels[1:])


@dataclass(frozen=True)
class ClassificationSample:
    """A sentence or sentence pair and its class id (or score, for regression): one loss term per example,
    so ``target_tokens`` (what the trainer normalises the loss by) is 1."""

    input_ids: list[int]
    token_type_ids: list[int] | None
    label: int | float
    target_tokens: int = 1


def tokenize_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 256) -> list[Sample]:
    """Prompt + target + EOS, cut at ``max_length`` tokens (the prompt is kept whole where possible)."""
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    targets = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    samples = []
    for prompt, target in zip(prompts, targets, strict=True):
        target = [*target, eos]
        ids = (prompt + target)[:max_length]
        labels = ([IGNORE] * len(prompt) + target)[:max_length]
        sample = Sample(ids, labels)
        if sample.target_tokens:  # a prompt that fills max_length leaves nothing to learn
            samples.append(sample)
    if len(samples) < len(pairs):
        print(f"skipped {len(pairs) - len(samples)} of {len(pairs)} examples whose prompt leaves no target tokens "
              f"within max_length={max_length}")
    return samples


def plan_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                 group_by_length: bool = True, group_size: int = 64) -> list[list[int]]:
    """One epoch's batches as lists of example indices, every example once (a last short batch is dropped).

    With ``group_by_length``, a shuffled window of ``group_size`` batches is sorted by length before being
    cut into batches, and the batches are shuffled again: lengths within a batch are close (little
    padding) while the order stays random.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * group_size
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s:s + window], key=lambda j: lengths[j])]
    batches = [order[s:s + batch_size] for s in range(0, len(order) - batch_size + 1, batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """This process's rows of a global batch (rows are dealt out, so long and short rows mix)."""
    return batch[rank::world_size]


def collate(samples: Sequence[Sample] | Sequence[ClassificationSample], pad_id: int) -> dict[str, torch.Tensor]:
    if isinstance(samples[0], ClassificationSample):
        return collate_classification(samples, pad_id)
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_classification(samples: Sequence[ClassificationSample], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    types = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        mask[row, :n] = 1
        if s.token_type_ids is not None:
            types[row, :n] = torch.tensor(s.token_type_ids)
    regression = isinstance(samples[0].label, float)
    labels = torch.tensor([s.label for s in samples], dtype=torch.float32 if regression else torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if samples[0].token_type_ids is not None:
        batch["token_type_ids"] = types
    return batch


def padding_fraction(samples: Sequence[Sample], batches: Sequence[Sequence[int]]) -> float:
    """Share of a plan's token slots that are padding."""
    real = sum(len(samples[i].input_ids) for b in batches for i in b)
    slots = sum(len(b) * max(len(samples[i].input_ids) for i in b) for b in batches)
    return 1 - real / slots if slots else 0.0
