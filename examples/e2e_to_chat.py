"""E2E NLG's CSV as chat JSONL (OpenAI ``messages``): user = the meaning representation, assistant = the text.

Why: the README walk-through fine-tunes SmolLM2-135M-Instruct on conversations, evaluates and serves it
through ``/v1/chat/completions``; this makes its data from the official E2E files, offline.

- train: one conversation per reference (as the built-in task trains on every reference);
- dev/test: one per MR, ending with the first reference, plus ``references`` (all of them) for scoring.

    LORAKIT_DATA=../shared/data .venv/bin/python examples/e2e_to_chat.py --split train --out e2e-chat-train.jsonl
    LORAKIT_DATA=../shared/data .venv/bin/python examples/e2e_to_chat.py --split dev --out e2e-chat-dev.jsonl \\
        --system "Write a one-sentence restaurant description from the attributes."

``--linearize`` gives the user turn as the built-in task's input (``name : The Vaults | Type : pub``)
instead of the MR as it is in the CSV (``name[The Vaults], eatType[pub]``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lorakit.data import linearize_e2e, read_e2e_csv
from lorakit.data.e2e import e2e_path


def conversations(split: str, root: str | None, *, system: str | None = None, linearize: bool = False,
                  limit: int | None = None) -> list[dict]:
    """The JSONL records for ``split`` (``limit``: the first MRs only)."""
    records = []
    for mr, refs in read_e2e_csv(e2e_path(split, root))[:limit]:
        head = [{"role": "system", "content": system}] if system else []
        head.append({"role": "user", "content": linearize_e2e(mr) if linearize else mr})
        if split == "train":
            records += [{"messages": [*head, {"role": "assistant", "content": ref}]} for ref in refs]
        elif refs:
            records.append({"messages": [*head, {"role": "assistant", "content": refs[0]}], "references": refs})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="dataset root (default $LORAKIT_DATA)")
    parser.add_argument("--split", default="train", choices=("train", "dev", "test"))
    parser.add_argument("--system", default=None, help="a system message to start every conversation with")
    parser.add_argument("--linearize", action="store_true", help="user turn = the task's linearised MR")
    parser.add_argument("--limit", type=int, default=None, help="only the first N meaning representations")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    records = conversations(args.split, args.data, system=args.system, linearize=args.linearize, limit=args.limit)
    with args.out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} conversations to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
