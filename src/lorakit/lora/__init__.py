"""LoRA layers and the operations that put them into a model (no files, no data, no training)."""

from .config import ARCHITECTURE_DEFAULTS, LoraConfig
from .layers import Embedding, FusedLinear, Linear, LoraLayer, ModulesToSave
from .model import (
    activate_adapter,
    active_adapters,
    adapter_config,
    adapter_configs,
    adapter_names,
    add_adapter,
    base_state_dict,
    deactivate_adapter,
    delete_adapter,
    disable_adapters,
    lora_layers,
    max_weight_change,
    merge_adapters,
    merge_and_unload,
    merged_adapters,
    set_active_adapters,
    set_trainable,
    unload,
    unmerge_adapters,
)
from .routing import RowRouting, route_rows, set_row_routing
from .state import AdapterMismatchError, adapter_state_dict, load_adapter_state_dict

__all__ = [
    "ARCHITECTURE_DEFAULTS", "AdapterMismatchError", "Embedding", "FusedLinear", "Linear", "LoraConfig",
    "LoraLayer", "ModulesToSave", "RowRouting", "activate_adapter", "active_adapters", "adapter_config",
    "adapter_configs", "adapter_names", "adapter_state_dict", "add_adapter", "base_state_dict", "deactivate_adapter",
    "delete_adapter", "disable_adapters", "load_adapter_state_dict", "lora_layers", "max_weight_change",
    "merge_adapters", "merge_and_unload", "merged_adapters", "route_rows", "set_active_adapters",
    "set_row_routing", "set_trainable", "unload", "unmerge_adapters",
]
