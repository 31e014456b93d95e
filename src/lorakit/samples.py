"""A quick look at what a trained model writes: a few dev inputs, greedy, next to their references."""

from __future__ import annotations

from torch import nn

from .decode import generate, preset


def show_generations(model: nn.Module, tokenizer, task, data: str | None, count: int = 3) -> list[str]:
    examples = task.examples("dev", data)[:count]
    texts = generate(model, tokenizer, [task.prompt(ex.source) for ex in examples], preset("greedy"),
                     progress=False)
    for ex, text in zip(examples, texts, strict=True):
        reference = ex.references[0] if ex.references else "-"
        print(f"  input:     {ex.source}\n  generated: {text}\n  reference: {reference}\n")
    return texts
