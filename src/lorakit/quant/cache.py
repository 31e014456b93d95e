"""A quantized base cached on disk: quantize a local model once, then load the stored codes every later time.

Why: quantizing reads every full-precision weight and rounds it, which costs time and memory on each load
(SmolLM2-135M on 2 EPYC cores: seconds for int8, more for the 4-bit modes, and a load peak about twice the
quantized model's size; docs/quantization.md has the numbers). With the cache, ``from_pretrained`` maps the
fp32 file without reading the weights that get replaced, and the quantized layers come from one
safetensors file of their codes and scales.

An entry is ``$LORAKIT_HOME/quantized/<key>/``, keyed by the source folder's files (name, size, modification
time), the mode, the layers to quantize with their shapes and dtypes, and the lorakit and torch versions: a
changed model or version makes a new entry that replaces the old one (entries of folders that are gone are
removed too; another dtype or head choice is an entry of its own).
Only local folders loaded without extra ``from_pretrained`` keywords are cached (short names such as
``smollm2-135m`` resolve to one); hub ids are quantized on every load. An entry is written aside and
renamed into place (``files.build_stamped_folder``); one that cannot be read is rebuilt, and one that
cannot be written (read-only or full disk) is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import build_stamped_folder, folder_lock, stamped_folder_is_complete
from ..lora.layers import features
from .formats import FORMATS, QuantWeight, int8_kernel_available
from .model import QuantMode, QuantSummary, quant_plan, quantize_model
from .probe import choose_mode

CACHE_FORMAT = 1
MARKER = "lorakit-cache.json"
WEIGHTS = "quantized.safetensors"


def cache_root() -> Path:
    from ..models.registry import lorakit_home  # imported late: lorakit.models imports this package

    return lorakit_home() / "quantized"


def quantize_cached(model: nn.Module, mode: QuantMode, source: str | Path,
                    device: torch.device | str | None = None) -> QuantSummary:
    """``quantize_model(model, mode, device=device)`` for a model loaded from the folder ``source``, through the
    disk cache."""
    resolved = choose_mode(device=device) if mode == "auto" else mode
    if resolved == "none":
        return QuantSummary("none", mode)
    if resolved == "int8" and not int8_kernel_available():
        return quantize_model(model, resolved)  # raises the kernel's own error; the cache stays as it is
    plan = [(path, _shape(module), module.weight.dtype) for path, module, _ in quant_plan(model, resolved)]
    stamp = _stamp(Path(source), resolved, plan)
    folder = cache_root() / hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:20]
    stored = _read(folder, stamp, resolved, plan)
    summary = quantize_model(model, resolved, stored=stored)
    summary.requested, summary.from_cache = mode, stored is not None
    if stored is None:
        _write(folder, stamp, model, summary.layers)
    return summary


def _shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear or Conv1D, the shape its quantized weight is stored in."""
    inp, out, _ = features(module)
    return out, inp


def entries() -> Iterator[tuple[Path, dict]]:
    """Every entry with a readable marker: (its folder, the stamp it was made from)."""
    for marker in cache_root().glob(f"*/{MARKER}"):
        try:
            stamp = json.loads(marker.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(stamp, dict) and isinstance(stamp.get("source"), str):
            yield marker.parent, stamp


def _stamp(source: Path, mode: str, plan: list[tuple[str, tuple[int, int], torch.dtype]]) -> dict:
    """What an entry was made from: the folder's files, the mode and layers, and the code that quantized."""
    from .. import __version__

    source = source.resolve()
    files = sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in source.iterdir() if f.is_file())
    layers = hashlib.sha256(json.dumps([[p, s, str(d)] for p, s, d in plan]).encode()).hexdigest()
    return {"format": CACHE_FORMAT, "lorakit": __version__, "torch": torch.__version__, "source": str(source),
            "mode": mode, "layers": layers, "files": files}


def _read(folder: Path, stamp: dict, mode: str,
          plan: list[tuple[str, tuple[int, int], torch.dtype]]) -> dict[str, QuantWeight] | None:
    """The stored weights of a complete entry made from ``stamp``; None (rebuild) if there is none or it is
    unreadable."""
    if not stamped_folder_is_complete(folder, stamp, MARKER):
        return None
    try:
        tensors = load_file(folder / WEIGHTS)
        stored = {}
        for path, shape, dtype in plan:
            names = FORMATS[mode].stored_layout(shape)
            stored[path] = FORMATS[mode].from_stored(shape, dtype, {n: tensors.pop(f"{path}.{n}") for n in names})
        if tensors:
            raise ValueError(f"{len(tensors)} tensors no layer asks for, e.g. {next(iter(tensors))}")
        return stored
    except (OSError, SafetensorError, KeyError, ValueError) as err:
        warnings.warn(f"quantized cache {folder} is unreadable ({err}); quantizing again", stacklevel=3)
        with folder_lock(folder):  # so that the new entry replaces it (not one another process just wrote)
            if stamped_folder_is_complete(folder, stamp, MARKER):
                shutil.rmtree(folder, ignore_errors=True)
        return None


def _write(folder: Path, stamp: dict, model: nn.Module, layers: list[str]) -> None:
    """Store every quantized layer's tensors as a new entry; drop the entries it replaces (same folder, mode
    and layers, older files or code) and those whose folder is gone (a test's temporary model)."""
    tensors = {f"{path}.{name}": tensor.contiguous() for path in layers
               for name, tensor in model.get_submodule(path).qweight.stored().items()}
    try:
        build_stamped_folder(folder, lambda staging: save_file(tensors, staging / WEIGHTS), stamp, MARKER)
    except OSError as err:
        warnings.warn(f"could not write the quantized cache {folder} ({err}); the model is quantized as usual",
                      stacklevel=3)
        return
    for other, its in entries():
        same = all(its.get(k) == stamp[k] for k in ("source", "mode", "layers"))
        if other != folder and (same or not Path(its["source"]).is_dir()):
            shutil.rmtree(other, ignore_errors=True)
