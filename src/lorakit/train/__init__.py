"""The training engine shared by every task: batching, the losses, the loop, checkpoints."""

from .batching import ClassificationSample, Sample, collate, padding_fraction, plan_batches, tokenize_pairs
from .config import TrainConfig
from .loss import CausalLMLoss, SequenceClassificationLoss
from .trainer import Trainer, TrainingDiverged

__all__ = ["CausalLMLoss", "ClassificationSample", "Sample", "SequenceClassificationLoss", "TrainConfig", "Trainer",
           "TrainingDiverged", "collate", "padding_fraction", "plan_batches", "tokenize_pairs"]
