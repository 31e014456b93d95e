"""``adapter_config.json`` in PEFT's schema, both ways.

lorakit's own extras (LoRA on q/k/v slices of a fused projection) have no PEFT field. They are saved as
an exactly equivalent plain LoRA (rank k*r, block-structured B, alpha scaled to keep the same scaling) in
PEFT's fields, and described in the safetensors header under ``lorakit`` so lorakit can restore them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..lora.config import LoraConfig
from ..lora.layers import FusedLinear
from ..lora.model import adapter_config, lora_layers

# PEFT features lorakit does not implement: an adapter using them cannot load exactly, so it must not load.
UNSUPPORTED = ("use_dora", "layers_to_transform", "layer_replication", "target_parameters",
               "trainable_token_indices", "lora_bias", "use_qalora", "alora_invocation_tokens", "use_bdlora")
FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "bias", "modules_to_save",
          "use_rslora", "init_lora_weights", "rank_pattern", "alpha_pattern", "task_type",
          "base_model_name_or_path")


class AdapterFormatError(ValueError):
    """An adapter file that cannot be read: names the file and what is wrong in it."""


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


def from_peft(data: Any, meta: dict[str, Any] | None, source: str) -> LoraConfig:
    """A ``LoraConfig`` from PEFT's JSON (and lorakit's header metadata, when the adapter is ours)."""
    if not isinstance(data, dict):
        raise AdapterFormatError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if data.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(f"{source}: key 'peft_type' is {data['peft_type']!r}; lorakit reads LoRA "
                                 "adapters only ('LORA')")
    for key in UNSUPPORTED:
        if data.get(key):
            raise AdapterFormatError(f"{source}: key {key!r} = {data[key]!r} is a PEFT feature lorakit does not "
                                     "implement, so this adapter cannot be loaded exactly")
    if "r" not in data:
        raise AdapterFormatError(f"{source}: missing key 'r'")
    fields = {k: data[k] for k in FIELDS if k in data and data[k] is not None}
    init = fields.get("init_lora_weights")
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
