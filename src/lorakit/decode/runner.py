"""One way to call any causal LM with a KV cache: prefill a left-padded batch, then one token per row.

Why a loop of our own rather than ``model.generate``: it can drop finished rows and refill their slots,
run a prompt once for all its beams and keep a cache that grows in place. A step is one forward call plus
a few tensor operations; the prefill computes the LM head for the last position only.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .cache import new_cache


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) with prompts aligned on the right, so every row's next token is the last column."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (an empty prompt has nothing to condition on)")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, as HF ``generate`` computes them (pads get
    0); models with learned positions (GPT-2) would otherwise see shifted positions under left padding."""
    return (mask.cumsum(-1) - 1).clamp_(min=0)


class CausalLM:
    """A causal LM's forward as decoding needs it. Works out once what the model's ``forward`` calls its
    cache (``cache`` in transformers 5.x, ``past_key_values`` before) and whether it can skip the LM head
    for all but the last position (``logits_to_keep``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_arg = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self.takes_positions = "position_ids" in params
        self.device = next(model.parameters()).device

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                 keep_last: bool) -> torch.Tensor:
        kwargs: dict[str, Any] = {self.cache_arg: cache, "attention_mask": mask, "use_cache": True}
        if self.takes_positions:
            kwargs["position_ids"] = positions
        if keep_last and self.keep_arg is not None:
            kwargs[self.keep_arg] = 1
        out = self.model(input_ids=ids, return_dict=True, **kwargs)
        # float32 copy: the scores of every strategy are computed in float32 as HF does, and the slice must
        # not keep the (possibly prompt-long) logits tensor alive.
        return out.logits[:, -1].to(dtype=torch.float32, copy=True)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor,
                headroom: int = 64) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Run the prompts: (next-token logits, filled cache with room for ``headroom`` more tokens, each
        row's last position)."""
        positions = positions_from_mask(mask)
        cache = new_cache(self.model, headroom)
        logits = self._forward(ids, mask, positions, cache, keep_last=True)
        return logits, cache, positions[:, -1]

    def step(self, tokens: torch.Tensor, cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``mask`` already includes it, ``positions`` are its positions)."""
        return self._forward(tokens[:, None], mask, positions[:, None], cache, keep_last=False)

