"""Adapter folders in PEFT's on-disk format: save, read, load into a model."""

from .io import CONFIG_NAME, WEIGHTS_NAME, load_adapter, read_adapter, save_adapter, serialize_adapter
from .peft_format import AdapterFormatError

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "AdapterFormatError", "load_adapter", "read_adapter", "save_adapter",
           "serialize_adapter"]
