"""Recipes: short compositions of lorakit's parts into a whole job (``finetune``: config -> trained run)."""

from .finetune import Parts, add_lora, build_trainer, setup

__all__ = ["Parts", "add_lora", "build_trainer", "setup"]
