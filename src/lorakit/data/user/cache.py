"""The tokenized-samples cache: safetensors arrays and a ``meta.json``, keyed by the files' bytes, the
tokenizer and every setting, so a rerun or resume does not tokenize again."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain, pairwise
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from ...files import atomic_folder, folder_lock
from ...train.batching import ClassificationSample, Sample
from .encode import PreparedData, SplitStats
from .load import LabelSet

CACHE_VERSION = 2  # 2: eval_texts


def _file_digest(source: str | os.PathLike[str]) -> str:
    path = Path(source).expanduser()
    if not path.is_file():
        return f"hub:{source}"  # a hub id: what it holds can change, so this never hits (see _cache_key)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Everything about a tokenizer that changes token ids or the chat rendering, hashed."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = {"special": tokenizer.special_tokens_map, "ids": tokenizer.all_special_ids,
             "template": getattr(tokenizer, "chat_template", None), "eos": tokenizer.eos_token_id,
             "truncation_side": tokenizer.truncation_side}
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _cache_key(data, eval_data, tokenizer, **settings: Any) -> str | None:
    train = _file_digest(data)
    evaluation = None if eval_data is None else _file_digest(eval_data)
    if train.startswith("hub:") or (evaluation or "").startswith("hub:"):
        return None
    parts = {"version": CACHE_VERSION, "train": train, "eval": evaluation,
             "tokenizer": tokenizer_fingerprint(tokenizer), **settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _arrays(samples: Sequence[Sample] | Sequence[ClassificationSample]) -> dict[str, np.ndarray]:
    def flat(rows: Iterable[list[int]]) -> np.ndarray:
        return np.array(list(chain.from_iterable(rows)), dtype=np.int32)

    lengths = np.array([len(s.input_ids) for s in samples], dtype=np.int64)
    out = {"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
           "input_ids": flat(s.input_ids for s in samples)}
    if samples and isinstance(samples[0], ClassificationSample):
        regression = isinstance(samples[0].label, float)
        out["label"] = np.array([s.label for s in samples], dtype=np.float64 if regression else np.int64)
        if samples[0].token_type_ids is not None:
            out["token_type_ids"] = flat(s.token_type_ids for s in samples)
    else:
        out["labels"] = flat(s.labels for s in samples)
    return out


def _samples(arrays: Mapping[str, np.ndarray], classification: bool) -> list:
    bounds = arrays["offsets"].tolist()
    ids = arrays["input_ids"].tolist()
    spans = list(pairwise(bounds))
    if not classification:
        labels = arrays["labels"].tolist()
        return [Sample(ids[a:b], labels[a:b]) for a, b in spans]
    types = arrays["token_type_ids"].tolist() if "token_type_ids" in arrays else None
    label = arrays["label"].tolist()
    return [ClassificationSample(ids[a:b], None if types is None else types[a:b], label[n])
            for n, (a, b) in enumerate(spans)]


def _save_cache(root: Path, key: str, prepared: PreparedData) -> Path | None:
    """Built aside and renamed (``atomic_folder``), so a killed run never leaves a half cache behind; a
    cache another process wrote for the same key first is kept (as good, and perhaps being read)."""
    final = root / key
    with folder_lock(final):
        if (final / "meta.json").is_file():
            return final
        with atomic_folder(final) as staging:
            splits = {"train": prepared.train, **({"eval": prepared.eval} if prepared.eval is not None else {})}
            for name, samples in splits.items():
                if samples:
                    save_file(_arrays(samples), str(staging / f"{name}.safetensors"))
            meta = {
                "version": CACHE_VERSION, "format": prepared.format, "source": prepared.source,
                "eval_source": prepared.eval_source, "max_length": prepared.max_length,
                "truncation": prepared.truncation, "chat_template": prepared.chat_template,
                "labels": None if prepared.labels is None else {"kind": prepared.labels.kind,
                                                                "names": list(prepared.labels.names)},
                "train_stats": vars(prepared.train_stats),
                "eval_stats": None if prepared.eval_stats is None else vars(prepared.eval_stats),
                "eval": prepared.eval is not None, "header": prepared.header, "eval_texts": prepared.eval_texts,
            }
            (staging / "meta.json").write_text(json.dumps(meta, indent=1))
    return final


def _load_cache(folder: Path) -> PreparedData:
    meta = json.loads((folder / "meta.json").read_text())
    classification = meta["format"] == "classification"

    def split(name: str) -> list:
        path = folder / f"{name}.safetensors"
        return _samples(load_file(str(path)), classification) if path.is_file() else []

    labels = None if meta["labels"] is None else LabelSet(meta["labels"]["kind"], tuple(meta["labels"]["names"]))
    prepared = PreparedData(
        meta["format"], split("train"), split("eval") if meta["eval"] else None,
        SplitStats(**meta["train_stats"]), None if meta["eval_stats"] is None else SplitStats(**meta["eval_stats"]),
        labels, meta["chat_template"], None if meta["eval_texts"] is None else [tuple(t) for t in meta["eval_texts"]],
        meta["source"], meta["eval_source"], meta["max_length"], meta["truncation"],
        cache_path=folder, from_cache=True, header=[*meta["header"], f"tokenized samples read from the cache {folder}"])
    return prepared
