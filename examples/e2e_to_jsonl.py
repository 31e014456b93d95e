"""E2E NLG as a user's prompt/completion JSONL: the file ``lorakit train --data`` reads like any user file.

Why: the proof that the generic path is right. Training rows are exactly the built-in ``e2e`` task's pairs
(prompt = linearised MR + newline, completion = one reference; one row per reference), so they tokenize to
the same samples. Dev/test rows are one per MR, with ``completion`` the first reference and ``references``
all of them (extra keys are ignored by the reader; ``lorakit evaluate`` can score against all).

    LORAKIT_DATA=../shared/data .venv/bin/python examples/e2e_to_jsonl.py --split train --out e2e-train.jsonl
    LORAKIT_DATA=../shared/data .venv/bin/python examples/e2e_to_jsonl.py --split dev --out e2e-dev.jsonl

Offline: reads the official CSVs under ``--data`` / ``$LORAKIT_DATA`` (``e2e/trainset.csv``...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lorakit.tasks import get_task


def rows(split: str, root: str | None, limit: int | None = None) -> list[dict]:
    """The JSONL records for ``split`` (``limit``: the first MRs only, for quick tries and tests)."""
    task = get_task("e2e")
    examples = task.examples(split, root)[:limit]
    if split == "train":
        return [{"prompt": task.prompt(ex.source), "completion": ref} for ex in examples for ref in ex.references]
    return [{"prompt": task.prompt(ex.source), "completion": ex.references[0], "references": list(ex.references)}
            for ex in examples if ex.references]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="dataset root (default $LORAKIT_DATA)")
    parser.add_argument("--split", default="train", choices=("train", "dev", "test"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N meaning representations")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    records = rows(args.split, args.data, args.limit)
    with args.out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
