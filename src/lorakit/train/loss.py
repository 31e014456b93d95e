"""Training objectives as modules (so DDP can wrap them), each returning a sum and its count.

Causal LM: cross-entropy on target tokens only. The output projection (49k x 576 for SmolLM2, about a
quarter of its forward FLOPs) is applied only where a label exists, not on prompt and padding positions
whose logits no loss would use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batching import IGNORE

# config fields of models that transform logits after the output layer (Gemma 2, Cohere, Granite)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class CausalLMLoss(nn.Module):
    """``forward(batch) -> (sum of token losses, number of target tokens)``.

    Returning the sum lets the caller normalise by the token count of the whole optimizer step (all
    micro-batches, all processes), which makes gradient accumulation and DDP exact.
    """

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0, targets_only_head: bool = True) -> None:
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        body = getattr(model, "base_model", None)
        # Only when the model is body -> head with nothing in between (no logit scaling or soft-capping).
        config = getattr(model, "config", None)
        simple = all(getattr(config, key, None) in (None, 1.0) for key in LOGIT_TRANSFORMS)
        self.split = targets_only_head and head is not None and body is not None and body is not model and simple

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels[:, 1:]
        keep = targets != IGNORE
        if self.split:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                           use_cache=False).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[:, :-1][keep])
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            logits = logits[:, :-1][keep]
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum", label_smoothing=self.label_smoothing)
        return loss, keep.sum()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed loss of a classification head's float logits: squared error for a single-output regression
    head (STS-B), else cross-entropy over classes, as Hugging Face's heads compute them."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
    return F.cross_entropy(logits, labels, reduction="sum")


class SequenceClassificationLoss(nn.Module):
    """``forward(batch) -> (summed loss over examples, number of examples)``: cross-entropy over classes, or
    squared error for a single-output regression head (STS-B), as Hugging Face's heads compute them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits.float()
        return classification_loss(logits, labels), torch.tensor(len(labels), device=logits.device)
