"""Why does RTE sit near chance with all-MiniLM-L6-v2? Baselines and a probe of the frozen encoder.

LoRA and full fine-tuning of all-MiniLM-L6-v2 both score 54-55% accuracy on RTE dev (docs/results-glue.md),
barely above always answering the majority class. This script separates "the task is hard for any small
model on 2,490 training pairs" from "this encoder's features do not carry entailment":

* the majority class of dev (the floor any collapsed classifier reaches);
* a word-overlap baseline: the share of the hypothesis' words found in the premise, thresholded on train
  (RTE's non-entailments often overlap as much as its entailments, so this stays low);
* a linear probe of the frozen encoder: mean-pooled MiniLM embeddings u (premise) and v (hypothesis), the
  features [u, v, |u - v|, u * v] (InferSent/SBERT's pair features), logistic regression (scikit-learn,
  features standardised, C
  chosen by 5-fold cross-validation on train), scored on dev; and the same probe on the pair as one input
  (premise and hypothesis in one sequence, mean-pooled), which is what fine-tuning starts from;
* with ``--predictions FILE`` (``lorakit predict --task rte`` output), how a fine-tuned model's predictions
  split between the classes: a model that collapsed to one class scores the majority share.

    python benchmarks/rte_probe.py [--predictions rte-dev.txt]
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import PreTrainedTokenizerBase

from lorakit.data.glue import GlueExample, load_glue
from lorakit.hardware import describe
from lorakit.models import load_model


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def overlap(ex: GlueExample) -> float:
    hypothesis = words(ex.text_b or "")
    return len(hypothesis & words(ex.text_a)) / max(1, len(hypothesis))


def overlap_baseline(train: list[GlueExample], dev: list[GlueExample]) -> float:
    """Accuracy on dev of 'entailment (0) when overlap >= t', t the best threshold on train."""
    scores = np.array([overlap(ex) for ex in train])
    labels = np.array([ex.label for ex in train])
    best = max(np.unique(scores), key=lambda t: np.mean(np.where(scores >= t, 0, 1) == labels))
    dev_pred = np.where(np.array([overlap(ex) for ex in dev]) >= best, 0, 1)
    return float(np.mean(dev_pred == np.array([ex.label for ex in dev])))


@torch.no_grad()
def embed(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, first: list[str],
          second: list[str] | None = None, batch: int = 64) -> np.ndarray:
    """Mean-pooled last hidden states (what sentence-transformers does for this model), one row per input."""
    out = []
    for i in range(0, len(first), batch):
        enc = tokenizer(first[i:i + batch], None if second is None else second[i:i + batch], padding=True,
                        truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)


def probe(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray) -> tuple[float, float]:
    """(train accuracy, dev accuracy) of a standardised logistic regression, C picked by 5-fold CV on train."""
    def model(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))

    best = max((0.001, 0.01, 0.1, 1.0), key=lambda c: cross_val_score(model(c), train_x, train_y, cv=5,
                                                                       scoring="accuracy").mean())
    clf = model(best).fit(train_x, train_y)
    return float(clf.score(train_x, train_y)), float(clf.score(dev_x, dev_y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("LORAKIT_DATA"), help="dataset root (default $LORAKIT_DATA)")
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--predictions", help="a fine-tuned model's dev predictions (lorakit predict output)")
    parser.add_argument("--limit", type=int, help="only the first N train and dev pairs (a quick check)")
    args = parser.parse_args()
    if args.limit is not None and args.limit < 10:
        parser.error("--limit must be at least 10 (5-fold cross-validation needs both classes in every fold)")
    print(f"machine: {describe()}")
    train, dev = load_glue("rte", "train", args.data)[:args.limit], load_glue("rte", "dev", args.data)[:args.limit]
    train_y, dev_y = np.array([ex.label for ex in train]), np.array([ex.label for ex in dev])
    counts = Counter(dev_y.tolist())
    print(f"RTE: {len(train)} train pairs, {len(dev)} dev pairs; dev labels {dict(sorted(counts.items()))} "
          "(0 = entailment)")
    print(f"majority class on dev: {max(counts.values()) / len(dev):.4f}")
    print(f"word overlap, threshold tuned on train: {overlap_baseline(train, dev):.4f}")

    started = time.perf_counter()
    classifier, tokenizer = load_model(args.model, "sequence-classification", num_labels=2)
    model = classifier.base_model.eval()  # the encoder alone: its head is untrained and not used
    u_train = embed(model, tokenizer, [ex.text_a for ex in train])
    v_train = embed(model, tokenizer, [ex.text_b or "" for ex in train])
    u_dev = embed(model, tokenizer, [ex.text_a for ex in dev])
    v_dev = embed(model, tokenizer, [ex.text_b or "" for ex in dev])
    pair_train = embed(model, tokenizer, [ex.text_a for ex in train], [ex.text_b or "" for ex in train])
    pair_dev = embed(model, tokenizer, [ex.text_a for ex in dev], [ex.text_b or "" for ex in dev])
    print(f"(encoded {2 * len(train) + 2 * len(dev)} sentences and {len(train) + len(dev)} pairs in "
          f"{time.perf_counter() - started:.0f} s)")

    def features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)

    fit, score = probe(features(u_train, v_train), train_y, features(u_dev, v_dev), dev_y)
    print(f"frozen probe, separate sentences [u, v, |u-v|, u*v]: train {fit:.4f}, dev {score:.4f}")
    fit, score = probe(pair_train, train_y, pair_dev, dev_y)
    print(f"frozen probe, the pair as one input (mean-pooled): train {fit:.4f}, dev {score:.4f}")
    cosine = (u_dev * v_dev).sum(1) / (np.linalg.norm(u_dev, axis=1) * np.linalg.norm(v_dev, axis=1))
    for label in sorted(counts):
        print(f"  dev cosine(premise, hypothesis), label {label}: mean {cosine[dev_y == label].mean():.3f}")

    if args.predictions:
        lines = Path(args.predictions).read_text(encoding="utf-8").split()
        names = {"entailment": 0, "not_entailment": 1}
        if len(lines) < len(dev):
            raise SystemExit(f"{args.predictions}: {len(lines)} predictions for {len(dev)} dev pairs")
        pred = np.array([names.get(x, int(x) if x.isdigit() else -1) for x in lines])[:len(dev)]
        share = Counter(pred.tolist())
        print(f"predictions {args.predictions}: {dict(sorted(share.items()))}, accuracy "
              f"{float(np.mean(pred == dev_y)):.4f}")


if __name__ == "__main__":
    main()
