"""lorakit: Low-Rank Adaptation for PyTorch and Hugging Face models."""

from .adapters import AdapterFormatError, load_adapter, read_adapter, save_adapter
from .lora import *  # noqa: F403  (the LoRA API is the package's API)
from .lora import __all__ as _lora_all
from .report import ParameterReport, parameter_report

__version__ = "0.1.0"
__all__ = [*_lora_all, "AdapterFormatError", "ParameterReport", "load_adapter", "parameter_report",
           "read_adapter", "save_adapter"]
