"""The training engine shared by every task: batching, the target-only loss, the loop, checkpoints."""

from .batching import Sample, collate, padding_fraction, plan_batches, tokenize_pairs
from .config import TrainConfig
from .loss import CausalLMLoss
from .trainer import Trainer, TrainingDiverged

__all__ = ["CausalLMLoss", "Sample", "TrainConfig", "Trainer", "TrainingDiverged", "collate", "padding_fraction",
           "plan_batches", "tokenize_pairs"]
