"""SmolLM2's packaged GGUF, converted once into a plain HF folder in lorakit's cache, written atomically.

Why: SmolLM2 ships quantized (GGUF, Q4_1). transformers dequantizes it on every load (~15-30 s on CPU), so it
is converted once into ``$LORAKIT_HOME/models/smollm2-135m`` (safetensors, ~1-2 s to load afterwards). A
conversion killed half-way must never leave a folder that later loads as a model, hence the staging folder,
rename and completion marker (``files.build_stamped_folder``).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..files import build_stamped_folder, stamped_folder_is_complete
from .compat import dtype_kwargs
from .registry import (
    SMOLLM2_GGUF,
    SMOLLM2_INSTALL,
    SMOLLM2_PACKAGE,
    ModelNotFoundError,
    lorakit_home,
    package_file,
)

__all__ = ["CACHE_MARKER", "convert_smollm2", "smollm2_cache_dir"]

# Written last into a finished cache folder: a folder without it is a killed or foreign write, never loaded.
CACHE_MARKER = "lorakit-cache.json"
_CACHE_FORMAT = 1
_STALE_TMP_S = 3600.0


def smollm2_cache_dir() -> Path:
    """Where the converted SmolLM2 lives: ``$LORAKIT_HOME/models/smollm2-135m``."""
    return lorakit_home() / "models" / "smollm2-135m"


def _source_stamp(gguf: Path) -> dict[str, Any]:
    """What the cache was built from; a different GGUF (package upgrade) or format triggers a rebuild."""
    return {"format": _CACHE_FORMAT, "source": gguf.name, "source_bytes": gguf.stat().st_size}


def _require_modules(modules: tuple[str, ...], install: str) -> None:
    """Check, without importing, for the optional ``lorakit[models]`` extras that transformers' GGUF reader
    imports on its own (``gguf``, ``accelerate``): a missing one fails here with the install line instead of
    deep inside transformers. Nothing imports them at module level, so lorakit works without them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelNotFoundError(f"converting SmolLM2 needs {', '.join(missing)}; run `{install}`")


def _remove_stale_tmp(dest: Path) -> None:
    """Delete ``.tmp-*`` folders that lorakit before ``atomic_folder`` left (~0.5 GB each) once they are old:
    such a version takes no lock, so a recent one may still be converting. Today's leftovers
    (``.<name>.partial-*``) are removed by ``recover_folder`` as soon as their process is gone."""
    for tmp in dest.parent.glob(f".{dest.name}.tmp-*"):
        if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
            shutil.rmtree(tmp, ignore_errors=True)


def _dequantize_gguf(gguf: Path, out: Path) -> None:
    """Load a GGUF through transformers (dequantizing to float32) and save it as a plain HF folder."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 **dtype_kwargs(torch.float32))
    # The weights are dense now; save_pretrained refuses while the model still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def convert_smollm2(*, force: bool = False) -> Path:
    """Return the converted SmolLM2 folder, converting the packaged GGUF first if needed (~15-30 s, once)."""
    gguf = package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF, SMOLLM2_INSTALL)
    dest, stamp = smollm2_cache_dir(), _source_stamp(gguf)
    if not force and stamped_folder_is_complete(dest, stamp, CACHE_MARKER):
        return dest
    _require_modules(("gguf", "accelerate"), SMOLLM2_INSTALL)
    if dest.parent.is_dir():
        _remove_stale_tmp(dest)
    print(f"converting SmolLM2 GGUF once into {dest} (about 30 s)", file=sys.stderr)
    build_stamped_folder(dest, lambda tmp: _dequantize_gguf(gguf, tmp), stamp, CACHE_MARKER)
    return dest
