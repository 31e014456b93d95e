"""A quick look at what a trained model writes: a few dev inputs, greedy, next to their references."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def show_generations(model: nn.Module, tokenizer, task, data: str | None, count: int = 3,
                     max_new_tokens: int = 64) -> list[str]:
    examples = task.examples("dev", data)[:count]
    device = next(model.parameters()).device
    outputs = []
    for ex in examples:
        inputs = tokenizer(task.prompt(ex.source), return_tensors="pt", add_special_tokens=False).to(device)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        outputs.append(text)
        reference = ex.references[0] if ex.references else "-"
        print(f"  input:     {ex.source}\n  generated: {text}\n  reference: {reference}\n")
    return outputs
