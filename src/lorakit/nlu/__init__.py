"""Natural-language understanding with LoRA: GLUE prediction and scoring, one base model serving many task
adapters, and the multi-task and rank/target benchmarks."""

from .predict import evaluate_glue, load_classifier, predict, predict_logits, write_predictions

__all__ = ["evaluate_glue", "load_classifier", "predict", "predict_logits", "write_predictions"]
