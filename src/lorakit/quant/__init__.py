"""A quantized frozen base for LoRA (QLoRA style): int8, int4, NF4 or bf16 weights, chosen by measurement.

``quantize_model(model, mode)`` replaces a model's frozen Linear/Conv1D layers in place (``load_model(...,
quantize=...)`` does it on load); LoRA adapters then go on top as usual and stay in full precision.
Layering: ``formats`` (storage and kernels) -> ``layers`` (the modules, autograd) and ``probe`` (``auto``)
-> ``model`` -> ``cache`` (a local model's quantized layers kept on disk). See docs/quantization.md for the
modes, the measurements behind them and the limits.
"""

from .cache import quantize_cached
from .formats import FORMATS, BF16Weight, Int4Weight, Int8Weight, NF4Weight, QuantWeight, int8_kernel_available
from .layers import QuantConv1D, QuantizedLayer, QuantLinear, quantized
from .model import (
    HEADS,
    QUANT_MODES,
    QuantMode,
    QuantSummary,
    add_quantize_flag,
    describe,
    quant_mode,
    quantize_model,
    quantized_layers,
)
from .probe import choose_mode, measure_modes, probe_key

__all__ = [
    "FORMATS",
    "HEADS",
    "QUANT_MODES",
    "BF16Weight",
    "Int4Weight",
    "Int8Weight",
    "NF4Weight",
    "QuantConv1D",
    "QuantLinear",
    "QuantMode",
    "QuantSummary",
    "QuantWeight",
    "QuantizedLayer",
    "add_quantize_flag",
    "choose_mode",
    "describe",
    "int8_kernel_available",
    "measure_modes",
    "probe_key",
    "quant_mode",
    "quantize_cached",
    "quantize_model",
    "quantized",
    "quantized_layers",
]
