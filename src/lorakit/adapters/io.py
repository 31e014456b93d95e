"""Adapter folders on disk: ``adapter_config.json`` + ``adapter_model.safetensors``, as PEFT writes them.

Saving never leaves a half-written adapter (a new folder through ``files.atomic_folder``, each file of an
existing one through ``files.atomic_write``); loading reads safetensors (a legacy ``adapter_model.bin``
only through ``torch.load(weights_only=True)``, which cannot run code) and checks every tensor before the
model changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from ..files import atomic_folder, atomic_write, first_sentence
from ..lora.config import LoraConfig
from ..lora.model import add_adapter, rollback_on_error, saved_modules
from ..lora.state import (
    AdapterFormatError,
    AdapterMismatchError,
    adapter_state_dict,
    check_adapter_range,
    head_outputs_in_file,
    load_adapter_state_dict,
    resized_head,
)
from .peft_format import check_header_meta, dumps, from_peft, to_peft

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"


def serialize_adapter(model: nn.Module, name: str = "default") -> tuple[str, bytes]:
    """(adapter_config.json text, adapter_model.safetensors bytes) of adapter ``name``."""
    peft_config, meta = to_peft(model, name)
    tensors = adapter_state_dict(model, name)
    blob = safetensors.torch.save(tensors, metadata={"format": "pt", "lorakit": json.dumps(meta)})
    return dumps(peft_config), blob


def save_adapter(model: nn.Module, directory: str | os.PathLike, name: str = "default") -> Path:
    """Write adapter ``name`` to ``directory`` in PEFT's format; returns the folder.

    A new folder appears whole (built aside, then renamed); in an existing folder each file is replaced
    atomically, weights first, and other files there (logs, plots) are left alone.
    """
    directory = Path(directory)
    config_text, blob = serialize_adapter(model, name)
    if not directory.exists():
        with atomic_folder(directory) as staging:
            (staging / WEIGHTS_NAME).write_bytes(blob)
            (staging / CONFIG_NAME).write_text(config_text)
        return directory
    atomic_write(directory / WEIGHTS_NAME, blob)
    atomic_write(directory / CONFIG_NAME, config_text.encode())
    stale = directory / LEGACY_WEIGHTS_NAME
    if stale.exists():  # would otherwise disagree with the new safetensors file
        stale.unlink()
    return directory


def read_adapter(directory: str | os.PathLike) -> tuple[LoraConfig, dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read and check an adapter folder without touching any model: (config, tensors, lorakit metadata)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter folder {str(directory)!r} does not exist")
    tensors, meta = _read_weights(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing (an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        data = json.loads(config_path.read_bytes())
    except UnicodeDecodeError as err:
        raise AdapterFormatError(f"{config_path}: not UTF-8 text (byte {err.start})") from None
    except RecursionError:  # "[[[[..." a million deep: a RuntimeError that callers would not expect
        raise AdapterFormatError(f"{config_path}: JSON nested too deeply") from None
    except json.JSONDecodeError as err:
        raise AdapterFormatError(f"{config_path}: invalid JSON at line {err.lineno}, column {err.colno}: "
                                 f"{err.msg}") from err
    config = from_peft(data, meta, str(config_path))
    _check_declared_ranks(config, tensors, str(config_path))
    return config, tensors, meta


def _check_declared_ranks(config: LoraConfig, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse ranks larger than any LoRA tensor in the file before a layer is allocated for them.

    Why: ``"r": 1000000000`` over small tensors would otherwise make ``load_adapter`` allocate each layer's
    A and B at that rank (hundreds of GB: an allocator error at best, the process killed at worst) before
    the tensor shapes are compared. The exact per-module check still follows when the tensors are loaded.
    """
    ranks = [t.shape[0] for key, t in tensors.items() if key.endswith((".lora_A.weight", ".lora_embedding_A"))]
    largest = max(ranks, default=0)
    declared = [("r", config.r), *((f"rank_pattern[{k!r}]", v) for k, v in config.rank_pattern.items())]
    for key, rank in declared:
        if rank > largest:
            raise AdapterFormatError(f"{source}: {key} declares rank {rank} but the largest LoRA tensor in the file "
                                     f"has rank {largest}")


def _read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    path = directory / WEIGHTS_NAME
    if path.is_file():
        try:  # one read and one parse: a served adapter is read while requests wait for it
            data = path.read_bytes()
            tensors = safetensors.torch.load(data)
            header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
        except (safetensors.SafetensorError, OSError) as err:
            raise AdapterFormatError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                                     f"{err}") from err
        meta = None
        if "lorakit" in header:
            try:
                meta = json.loads(header["lorakit"])
            except json.JSONDecodeError as err:
                raise AdapterFormatError(f"{path}: header entry 'lorakit' is not valid JSON: {err}") from err
            except RecursionError:
                raise AdapterFormatError(f"{path}: header entry 'lorakit' is JSON nested too deeply") from None
            meta = check_header_meta(meta, f"{path}: header entry 'lorakit'")
        return tensors, meta
    legacy = directory / LEGACY_WEIGHTS_NAME
    if legacy.is_file():
        try:
            tensors = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as err:  # weights_only refuses anything but tensors: say so, never fall back
            raise AdapterFormatError(f"{legacy}: cannot be read as plain tensors ({first_sentence(err)}); only "
                                     f"tensors are loaded from a legacy .bin, never code: save it as {WEIGHTS_NAME}"
                                     ) from None
        if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise AdapterFormatError(f"{legacy}: expected a dict of tensors")
        return tensors, None
    raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} (or legacy {LEGACY_WEIGHTS_NAME}) in it")


def check_model_type(model: nn.Module, meta: dict[str, Any] | None, source: str) -> None:
    """``AdapterMismatchError`` when lorakit's header says the adapter was made for another architecture."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    saved_type = (meta or {}).get("model_type")
    if saved_type and model_type and saved_type != model_type:
        raise AdapterMismatchError(f"{source}: adapter was made for a {saved_type!r} model, this model is "
                                   f"{model_type!r}")


def load_adapter(model: nn.Module, directory: str | os.PathLike, name: str = "default",
                 activate: bool = True, head_size_from_file: bool = False) -> LoraConfig:
    """Add the adapter saved in ``directory`` (by lorakit or PEFT) to ``model`` as ``name``.

    All or nothing: on any error (unreadable file, other architecture, missing/unexpected key, wrong
    shape) the model is left exactly as it was and the error names the file and tensor.

    ``head_size_from_file``: a ``modules_to_save`` Linear (a classification head) takes the number of
    outputs saved in the file, so one base model can hold task adapters with 1, 2 or 3 labels at once.
    """
    config, tensors, meta = read_adapter(directory)
    source = str(Path(directory) / WEIGHTS_NAME)
    check_model_type(model, meta, source)
    with rollback_on_error(model, name):
        try:
            add_adapter(model, config, name, activate=activate)
        except (ValueError, TypeError) as err:
            raise AdapterMismatchError(f"{source}: {err}") from err
        if head_size_from_file:
            _resize_heads(model, name, tensors)
        load_adapter_state_dict(model, tensors, name, source=source)
        check_adapter_range(model, name, source)
    return config


def _resize_heads(model: nn.Module, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Give adapter ``name``'s copy of each Linear head the file's number of outputs (see ``load_adapter``)."""
    for path, wrapper in saved_modules(model):
        head = wrapper.modules_to_save[name] if name in wrapper.adapter_names else None
        outputs = head_outputs_in_file(path, head, tensors) if isinstance(head, nn.Linear) else None
        if outputs is None:
            continue  # same size, or a real mismatch that the state check reports
        new = resized_head(head, outputs, head.weight.device, head.weight.dtype)
        new.train(head.training)
        new.requires_grad_(head.weight.requires_grad)
        wrapper.modules_to_save[name] = new
