"""Checkpoints that are either complete or absent: written into a temporary folder, renamed into place,
and only then named by ``checkpoints/latest``. Resuming restores parameters, optimizer, scheduler and
RNG state, so the run continues as if it had never stopped.

A process killed at any point leaves one of: nothing yet, a staging folder (``.tmp-step-*``, never read,
removed on the next start), a renamed ``step-*`` folder that ``latest`` does not name yet (complete: it was
renamed only once written, so it is used when ``latest`` is missing), or a complete checkpoint.

Why not ``files.atomic_folder``: under ``torchrun`` every process writes its own ``rng-<rank>.pt`` into the
staging folder, between barriers, and the main process renames it afterwards (``Trainer.save_checkpoint``).
So the staging folder needs a name each process derives from the step alone (``staging_dir``), where
``atomic_folder`` gives a random one to a single ``with`` block in a single process; and its ``flock``
guards a build by one process, not one spread over several processes (perhaps on several machines). The
trainer's final result (``model``/``adapter``) does use ``atomic_folder``; ``clean_stale`` recovers it.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import first_sentence, recover_folder

LATEST = "latest"
STAGING_PREFIX = ".tmp-step-"
CHECKPOINT_FILES = ("trainable.safetensors", "state.pt", "rng-0.pt")
RESULT_FOLDERS = ("model", "adapter", "best")  # what the trainer builds with files.atomic_folder


def checkpoint_root(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def staging_dir(output: str | Path, step: int) -> Path:
    return checkpoint_root(output) / f"{STAGING_PREFIX}{step:07d}"


def write_rank_state(folder: Path, rank: int) -> None:
    torch.save(rng_state(), folder / f"rng-{rank}.pt")


def write_main_state(folder: Path, model: nn.Module, optimizer, scheduler, scaler, step: int) -> None:
    save_file(trainable_tensors(model), str(folder / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "step": step}, folder / "state.pt")


def publish(output: str | Path, step: int, keep: int) -> Path:
    """Rename the staged checkpoint into place, point ``latest`` at it, drop the oldest beyond ``keep``."""
    root = checkpoint_root(output)
    final = root / f"step-{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging_dir(output, step), final)
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(final.name + "\n")
    os.replace(tmp, root / LATEST)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(output: str | Path) -> Path | None:
    pointer = checkpoint_root(output) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not re.fullmatch(r"step-\d{7}", name):
        raise ValueError(f"{pointer}: expected a checkpoint name like step-0000100, got {name!r}")
    folder = checkpoint_root(output) / name
    return folder if folder.is_dir() else None


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CHECKPOINT_FILES)


def resume_point(output: str | Path) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names, else (killed between renaming the first
    checkpoint into place and writing ``latest``) the newest complete ``step-*`` folder, else None."""
    latest = latest_checkpoint(output)
    if latest is not None and is_complete(latest):
        return latest
    folders = sorted(p for p in checkpoint_root(output).glob("step-*") if re.fullmatch(r"step-\d{7}", p.name))
    return next((p for p in reversed(folders) if is_complete(p)), None)


def step_of(folder: Path) -> int:
    return int(folder.name.removeprefix("step-"))


def clean_stale(output: str | Path) -> list[Path]:
    """Remove what a killed process leaves half-written: checkpoint staging folders, ``latest``'s temporary
    file, the final result's leftovers (``recover_folder`` on ``model``, ``adapter`` and ``best``, which puts
    back a result killed between its two renames; ``.model.partial``/``.model.old`` and ``save_adapter``'s
    ``.adapter.<random>`` from earlier versions) and temporary files. Returns what was removed.

    ``recover_folder`` runs first: it restores an ``.adapter.old-*`` that the ``.adapter.*`` pattern would
    otherwise delete. Lock files are left to their holders (``files.folder_lock`` removes its own)."""
    output, root = Path(output), checkpoint_root(output)
    removed = [path for name in RESULT_FOLDERS for path in recover_folder(output / name)]
    stale = [*root.glob(f"{STAGING_PREFIX}*"), root / f".{LATEST}.tmp", output / ".model.partial",
             output / ".model.old", *(p for p in output.glob(".adapter.*") if p.name != ".adapter.lock"),
             output / "log.tmp", *output.glob(".run_config.json.*"), *output.glob(".summary.json.*"),
             *output.glob(".best.json.*"), *(output / "adapter").glob(".adapter_*.*")]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed


def _read(file: Path, reader: Callable[[Path], Any]) -> Any:
    """``reader(file)``, or a one-line ValueError naming the file (a truncated or garbled checkpoint raises
    safetensors' and the unpickler's own errors, some of them many lines long)."""
    try:
        return reader(file)
    except Exception as err:
        raise ValueError(f"{file}: cannot read this checkpoint file ({first_sentence(err)}); resume from another "
                         "checkpoint (point checkpoints/latest at it) or start afresh") from None


def restore(folder: Path, model: nn.Module, optimizer, scheduler, rank: int, scaler=None) -> int:
    """Load a checkpoint into the run's objects; returns the step it was taken at. Every file is read before
    anything is changed."""
    tensors = _read(folder / "trainable.safetensors", lambda f: load_file(str(f)))
    state = _read(folder / "state.pt", lambda f: torch.load(f, map_location="cpu", weights_only=True))
    rng_file = folder / f"rng-{rank}.pt"
    rng = _read(rng_file if rng_file.exists() else folder / "rng-0.pt", lambda f: torch.load(f, weights_only=True))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != set(params):
        missing = sorted(set(params) - set(tensors)) or sorted(set(tensors) - set(params))
        raise ValueError(f"{folder}: checkpoint does not match this run's trainable parameters (e.g. {missing[0]!r}); "
                         "was it made with other settings?")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(rng)
    return int(state["step"])
