"""Data preparation speed: a 100,000-row prompt/completion JSONL through ``lorakit.data.user.prepare_data``.

Goal (issue 13): at most 10 s cold on 2 CPU cores (read, validate, tokenize with the GPT-2 fast tokenizer,
write the cache), and a warm rerun that reads the cache instead of tokenizing again.

Rows are E2E training pairs (``source + "\\n"`` -> reference), cycled with a row number so no two rows are
the same, when ``$LORAKIT_DATA/e2e`` is there; otherwise seeded synthetic sentences of similar length.

    .venv/bin/python benchmarks/prepare_speed.py [--rows 100000] [--repeats 3]

Timings on a shared machine are disturbed by other work: the best of --repeats is printed with the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from lorakit.data import DataRootError, load_e2e, training_pairs
from lorakit.data.user import prepare_data
from lorakit.hardware import describe
from lorakit.models import gpt2_tokenizer

WORDS = ("the", "restaurant", "near", "river", "serves", "cheap", "Italian", "food", "with", "a", "family",
         "friendly", "area", "and", "high", "customer", "rating", "in", "city", "centre", "pub", "coffee", "shop",
         "moderate", "price", "range", "five", "stars", "located", "beside")


def pairs(rows: int) -> tuple[list[tuple[str, str]], str]:
    """``rows`` (prompt, completion) pairs: E2E's, cycled, or synthetic ones of similar length."""
    try:
        base = [(f"{source}\n", target) for source, target in training_pairs(load_e2e("train"))]
        origin = "E2E train pairs, cycled"
    except (DataRootError, FileNotFoundError):
        rng = random.Random(0)
        base = [(" ".join(rng.choices(WORDS, k=18)) + "\n", " ".join(rng.choices(WORDS, k=22)) + ".")
                for _ in range(5000)]
        origin = "synthetic sentences"
    return [(f"{n} {base[n % len(base)][0]}", base[n % len(base)][1]) for n in range(rows)], origin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="cold and warm runs, each in a fresh cache")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args(argv)

    print(f"machine: {describe()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on the machine slows "
          "every timing below)")
    tokenizer = gpt2_tokenizer()
    rows, origin = pairs(args.rows)
    cold, warm, cold_cpu = [], [], []
    with tempfile.TemporaryDirectory(prefix="lorakit-prepare-speed-") as tmp:
        path = Path(tmp) / "train.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for prompt, completion in rows:
                handle.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
        size = path.stat().st_size / 1e6
        print(f"data: {args.rows} rows ({origin}), {size:.1f} MB, tokenizer GPT-2 (fast), "
              f"max_length={args.max_length}")
        for repeat in range(args.repeats):
            cache = Path(tmp) / f"cache-{repeat}"
            start, cpu = time.perf_counter(), time.process_time()
            first = prepare_data(path, tokenizer, max_length=args.max_length, cache_dir=cache, log=None)
            cold.append(time.perf_counter() - start)
            cold_cpu.append(time.process_time() - cpu)
            start = time.perf_counter()
            second = prepare_data(path, tokenizer, max_length=args.max_length, cache_dir=cache, log=None)
            warm.append(time.perf_counter() - start)
            if first.from_cache or not second.from_cache or first.train != second.train:
                print("error: the warm run did not read the cache, or read different samples", file=sys.stderr)
                return 1
        tokens = sum(len(s.input_ids) for s in first.train)
    print(f"samples: {len(first.train)}, tokens: {tokens}")
    print(f"cold (read + validate + tokenize + write cache): best {min(cold):.2f} s; all "
          f"{', '.join(f'{t:.2f}' for t in cold)} s (goal <= 10 s); CPU time of the best: "
          f"{cold_cpu[cold.index(min(cold))]:.2f} s (over all threads)")
    print(f"warm (cache): best {min(warm):.2f} s; all {', '.join(f'{t:.2f}' for t in warm)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
