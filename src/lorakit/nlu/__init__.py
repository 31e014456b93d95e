"""Natural-language understanding with LoRA: GLUE prediction and scoring, a user's own classifier, one base
model serving many task adapters, and the multi-task and rank/target benchmarks."""

from .predict import (
    evaluate_glue,
    load_classifier,
    load_user_classifier,
    predict,
    predict_logits,
    predict_user_logits,
    user_predictions,
    write_predictions,
)

__all__ = ["evaluate_glue", "load_classifier", "load_user_classifier", "predict", "predict_logits",
           "predict_user_logits", "user_predictions", "write_predictions"]
