"""``adapter_config.json`` in PEFT's schema, both ways.

lorakit's own extras (LoRA on q/k/v slices of a fused projection) have no PEFT field. They are saved as
an exactly equivalent plain LoRA (rank k*r, block-structured B, alpha scaled to keep the same scaling) in
PEFT's fields, and described in the safetensors header under ``lorakit`` so lorakit can restore them.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..lora.config import LoraConfig, check_field
from ..lora.layers import FusedLinear
from ..lora.model import adapter_config, lora_layers
from ..lora.state import AdapterFormatError

FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "bias", "modules_to_save",
          "use_rslora", "init_lora_weights", "rank_pattern", "alpha_pattern", "task_type",
          "base_model_name_or_path")
# Fields PEFT writes (up to peft 0.21) that lorakit reads past on purpose: bookkeeping, or settings of
# features whose use UNSUPPORTED (or init_lora_weights) already refuses. Only their types are checked.
# Any other field is a typo or a newer feature, so it is reported (a warning: the adapter may still load).
IGNORED: dict[str, tuple[type, ...]] = {
    "peft_type": (str,), "fan_in_fan_out": (bool,), "inference_mode": (bool,), "revision": (str,),
    "peft_version": (str,), "auto_mapping": (dict,), "layers_pattern": (str, list), "megatron_config": (dict,),
    "megatron_core": (str,), "loftq_config": (dict,), "eva_config": (dict,), "corda_config": (dict,),
    "lora_ga_config": (dict,), "velora_config": (dict,), "monteclora_config": (dict,), "runtime_config": (dict,),
    "arrow_config": (dict,), "kasa_config": (dict,), "qalora_group_size": (int,), "ensure_weight_tying": (bool,),
}
# PEFT features lorakit does not implement (an adapter using them cannot load exactly, so it must not load),
# with their types, so "use_dora": "no" is called a wrong type, not a feature in use
UNSUPPORTED_TYPES: dict[str, tuple[type, ...]] = {
    "use_dora": (bool,), "layers_to_transform": (list, int), "layer_replication": (list,),
    "target_parameters": (list,), "trainable_token_indices": (list, dict), "lora_bias": (bool,),
    "use_qalora": (bool,), "alora_invocation_tokens": (list,), "use_bdlora": (dict,),
}
UNSUPPORTED = tuple(UNSUPPORTED_TYPES)  # checked in this order: the first one in use is the one named
_TYPE_NAMES = {str: "a string", bool: "true or false", dict: "an object", list: "a list", int: "an integer"}
HEADER_FIELDS = {"format_version": (int,), "model_type": (str,)}  # plus fused_modules, rank/alpha_pattern


def task_type_of(model: nn.Module) -> str | None:
    cls = type(model).__name__
    if cls.endswith(("ForCausalLM", "LMHeadModel")):
        return "CAUSAL_LM"
    if cls.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if cls.endswith("ForTokenClassification"):
        return "TOKEN_CLS"
    return None


def to_peft(model: nn.Module, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(adapter_config.json contents, lorakit header metadata) for adapter ``name`` of ``model``."""
    config = adapter_config(model, name)
    rank_pattern, alpha_pattern = {}, {}
    for path, layer in lora_layers(model):
        if isinstance(layer, FusedLinear) and name in layer.adapter_names:
            full_rank = len(layer.enabled) * layer.r[name]
            key = re.escape(path)
            rank_pattern[key] = full_rank
            # alpha' / r' (or / sqrt(r')) must equal this layer's scaling
            alpha_pattern[key] = layer.scaling[name] * (math.sqrt(full_rank) if config.use_rslora else full_rank)
    uses_conv1d = any(isinstance(layer.base_layer, Conv1D) for _, layer in lora_layers(model)
                      if name in layer.adapter_names)
    peft = {
        "peft_type": "LORA",
        "task_type": config.task_type or task_type_of(model),
        "base_model_name_or_path": config.base_model_name_or_path
        or getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": config.target_modules,
        "exclude_modules": config.exclude_modules,
        "fan_in_fan_out": uses_conv1d,
        "bias": config.bias,
        "modules_to_save": config.modules_to_save,
        "use_rslora": config.use_rslora,
        "init_lora_weights": True,
        "rank_pattern": {**rank_pattern, **config.rank_pattern},
        "alpha_pattern": {**alpha_pattern, **config.alpha_pattern},
        "inference_mode": True,
    }
    meta = {
        "format_version": 1,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "fused_modules": config.fused_modules,
        "rank_pattern": config.rank_pattern,
        "alpha_pattern": config.alpha_pattern,
    }
    return peft, meta


def _check_type(value: Any, types: tuple[type, ...], what: str) -> None:
    """``AdapterFormatError`` unless ``value`` is None or of ``types`` (a bool is no integer here)."""
    if value is None or (isinstance(value, types) and not (isinstance(value, bool) and bool not in types)):
        return
    expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
    raise AdapterFormatError(f"{what} must be {expected}, got {value!r}")


def check_header_meta(meta: Any, where: str) -> dict[str, Any]:
    """lorakit's own header entry, checked like the config: an object whose fields have their types."""
    if not isinstance(meta, dict):
        raise AdapterFormatError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    for key, types in HEADER_FIELDS.items():
        _check_type(meta.get(key), types, f"{where}: key {key!r}")
    for key in ("fused_modules", "rank_pattern", "alpha_pattern"):
        if meta.get(key) is not None:
            try:
                check_field(key, meta[key])
            except ValueError as err:
                raise AdapterFormatError(f"{where}: {err}") from None
    return meta


def from_peft(data: Any, meta: dict[str, Any] | None, source: str) -> LoraConfig:
    """A ``LoraConfig`` from PEFT's JSON (and lorakit's header metadata, when the adapter is ours).

    Every field has its type checked (``AdapterFormatError`` naming ``source`` and the key); fields neither
    lorakit nor PEFT knows are reported with a warning, since they are usually a misspelt setting."""
    if not isinstance(data, dict):
        raise AdapterFormatError(f"{source}: expected a JSON object, got {type(data).__name__}")
    for key, types in {**IGNORED, **UNSUPPORTED_TYPES}.items():
        _check_type(data.get(key), types, f"{source}: key {key!r}")
    unknown = sorted(set(data) - set(FIELDS) - set(IGNORED) - set(UNSUPPORTED))
    if unknown:
        warnings.warn(f"{source}: unknown field(s) {', '.join(map(repr, unknown))} ignored (neither lorakit nor "
                      "PEFT reads them; a misspelt setting?)", UserWarning, stacklevel=3)
    if data.get("peft_type") not in (None, "LORA"):
        raise AdapterFormatError(f"{source}: key 'peft_type' is {data['peft_type']!r}; lorakit reads LoRA "
                                 "adapters only ('LORA')")
    for key in UNSUPPORTED:
        if data.get(key):
            raise AdapterFormatError(f"{source}: key {key!r} = {data[key]!r} is a PEFT feature lorakit does not "
                                     "implement, so this adapter cannot be loaded exactly")
    if "r" not in data:
        raise AdapterFormatError(f"{source}: missing key 'r'")
    fields = {k: data[k] for k in FIELDS if k in data and data[k] is not None}
    for key, value in fields.items():  # here too, since lorakit's header may replace some of them below
        if key != "init_lora_weights":
            try:
                check_field(key, value)
            except ValueError as err:
                raise AdapterFormatError(f"{source}: {err}") from None
    init = fields.get("init_lora_weights")
    if not isinstance(init, (bool, str, type(None))):
        raise AdapterFormatError(f"{source}: key 'init_lora_weights' must be true, false or a method name, "
                                 f"got {init!r}")
    if isinstance(init, str):
        # "gaussian"/"eva" only choose a starting point; "pissa", "olora", "loftq", "corda"... also change the
        # base weights, so the adapter is only right on a base lorakit does not have
        if init.lower() not in ("gaussian", "eva"):
            raise AdapterFormatError(f"{source}: key 'init_lora_weights' = {init!r} trains against a modified base "
                                     "model, which lorakit cannot reproduce")
        fields["init_lora_weights"] = True
    if meta is not None:
        fields["fused_modules"] = meta.get("fused_modules") or {}
        fields["rank_pattern"] = meta.get("rank_pattern") or {}
        fields["alpha_pattern"] = meta.get("alpha_pattern") or {}
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as err:
        raise AdapterFormatError(f"{source}: {err}") from err


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
