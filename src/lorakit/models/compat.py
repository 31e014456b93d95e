"""Keyword differences between the transformers versions lorakit supports (``>=4.46``, 4.x and 5.x).

Why a module of its own: both the GGUF conversion (``convert``) and the loader (``load``) pass a dtype to
``from_pretrained``, and ``load`` imports ``convert``; a shim shared by both lives below them.
"""

from __future__ import annotations

import torch
import transformers
from packaging.version import Version

__all__ = ["dtype_kwargs"]


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; pass whichever this version reads."""
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}
