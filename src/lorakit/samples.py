"""What a trained model writes, the way a user gets it back: a fresh base plus the saved adapter, merged,
then greedy generations for a few dev inputs next to their references.

Why reload instead of using the model in memory: it shows (and checks) that the files on disk are the
result, and that merging changes nothing but speed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .adapters import load_adapter
from .decode import generate, preset
from .lora import merge_adapters
from .models import load_model
from .quant import quant_mode


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


def reload_and_merge(trained: nn.Module, tokenizer, model_name: str, adapter_dir: Path, adapter_name: str,
                     probe: str) -> nn.Module:
    """A fresh ``model_name`` with the adapter read from ``adapter_dir``, merged; prints how far its logits
    are from the trained model's on ``probe`` (before and after the merge). A model trained on a quantized
    base is reloaded on the same quantized base (from the disk cache), where the adapter stays unmerged."""
    mode = quant_mode(trained) or "none"
    base, _ = load_model(model_name, quantize=mode)
    device = next(trained.parameters()).device
    base.to(device).eval()
    load_adapter(base, adapter_dir, name=adapter_name)
    batch = {k: v.to(device) for k, v in tokenizer([probe], return_tensors="pt").items()}
    was_training = trained.training
    reference = _logits(trained.eval(), batch)
    trained.train(was_training)
    reloaded = (_logits(base, batch) - reference).abs().max().item()
    where = f"a fresh {model_name}" + (f" ({mode})" if mode != "none" else "")
    if mode != "none":
        print(f"reloaded {adapter_dir} into {where}: max |logit diff| vs the trained model {reloaded:.2e}; "
              "not merged (a quantized base cannot take a merge; the adapter stays apart, same outputs)")
        return base
    merge_adapters(base)
    merged = (_logits(base, batch) - reference).abs().max().item()
    print(f"reloaded {adapter_dir} into {where}: max |logit diff| vs the trained model {reloaded:.2e}; merged "
          f"into the weights: {merged:.2e}")
    return base


def show_generations(model: nn.Module, tokenizer, prompts: list[str], references: list[str | None]) -> list[str]:
    texts = generate(model, tokenizer, prompts, preset("greedy"), progress=False)
    for prompt, text, reference in zip(prompts, texts, references, strict=True):
        print(f"  input:     {prompt.strip()}\n  generated: {text}\n  reference: {reference or '-'}\n")
    return texts
