"""Models that load without network access: short names, offline packages, the conversion cache, one loader.

Why a package: the registry of names (``registry``), the one-off GGUF conversion into lorakit's cache
(``convert``), resolving names, folders and hub ids and loading them (``load``, with ``compat`` for
transformers version differences) and the offline GPT-2 tokenizer (``tokenizer``) change for different
reasons. Import from here: ``from lorakit.models import load_model`` is the public surface.

Layering, lowest first (no module imports one above it): ``registry``, ``compat`` -> ``tokenizer``,
``convert`` -> ``load``. Nothing here imports the rest of lorakit but ``lorakit.files`` (standard library only)
and, in ``load``, ``lorakit.quant`` (quantizing on load; it imports nothing from here).
"""

from __future__ import annotations

from .convert import CACHE_MARKER, convert_smollm2, smollm2_cache_dir
from .load import ResolvedModel, load_model, load_tokenizer, resolve_model
from .registry import (
    MODEL_KINDS,
    MODELS,
    SMOLLM2_GGUF,
    ModelInfo,
    ModelKind,
    ModelNotFoundError,
    download_allowed,
    list_models,
    lorakit_home,
)
from .tokenizer import gpt2_tokenizer

__all__ = [
    "CACHE_MARKER",
    "MODELS",
    "MODEL_KINDS",
    "SMOLLM2_GGUF",
    "ModelInfo",
    "ModelKind",
    "ModelNotFoundError",
    "ResolvedModel",
    "convert_smollm2",
    "download_allowed",
    "gpt2_tokenizer",
    "list_models",
    "load_model",
    "load_tokenizer",
    "lorakit_home",
    "resolve_model",
    "smollm2_cache_dir",
]
