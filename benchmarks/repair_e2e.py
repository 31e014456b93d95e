"""Which candidates repair greedy E2E outputs best? Greedy outputs with a slot error get candidates once (beam
search's n-best and samples, as ``lorakit generate --preset greedy --rerank slots`` draws them); then each rule
picks among [greedy output, *candidates] and the whole dev set is scored, side by side.

Rules: the candidate sources (beams, samples, both) times the tie-break among the least wrong (the first
candidate, or the consensus: highest mean sentence BLEU against the others). ``--rerank slots`` is "beams +
samples, consensus" (its rows equal the command's file; tests/test_decode.py checks the command against
``repair_by_slots``, which draws its candidates with the same ``repair_candidates``).

    .venv/bin/python benchmarks/repair_e2e.py --adapter runs/e2e/adapter --greedy e2e-1100-dev.txt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from lorakit.hardware import describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", required=True, help="E2E adapter folder (merged into the fp32 base)")
    parser.add_argument("--data", default=os.environ.get("LORAKIT_DATA"), help="dataset root ($LORAKIT_DATA)")
    parser.add_argument("--limit", type=int, help="only the first N dev MRs (default: all 547)")
    parser.add_argument("--greedy", help="this adapter's greedy dev outputs, one per line (default: decode them)")
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-meteor", dest="meteor", action="store_false",
                        help="skip METEOR (a Java run per rule; the test of this script uses it)")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args(argv)

    from lorakit.decode import generate, preset
    from lorakit.decode.cli import load_for_generation
    from lorakit.decode.rerank import repair_candidates, rerank_by_slots
    from lorakit.metrics.coco import shared_meteor
    from lorakit.metrics.e2e import e2e_scores
    from lorakit.metrics.ser import slot_errors, slot_scores
    from lorakit.tasks import get_task

    print(f"machine: {describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    task = get_task("e2e")
    examples = task.examples("dev", args.data)[:args.limit]
    mrs, refs = [ex.meta["mr"] for ex in examples], [list(ex.references) for ex in examples]
    prompts = [task.prompt(ex.source) for ex in examples]
    model, tokenizer = load_for_generation(args.model, [args.adapter], merge=True, device="cpu")
    config = preset("greedy")
    if args.greedy:
        greedy = Path(args.greedy).read_text("utf-8").splitlines()[:len(examples)]
        if len(greedy) != len(examples):
            raise SystemExit(f"{args.greedy}: {len(greedy)} lines for {len(examples)} dev MRs")
    else:
        greedy = generate(model, tokenizer, prompts, config, batch_size=args.batch_size, progress=False)
    wrong = [i for i in range(len(examples)) if slot_errors(mrs[i], greedy[i]).count]
    start = time.perf_counter()
    beams, drawn = repair_candidates(model, tokenizer, [prompts[i] for i in wrong], config, samples=args.samples,
                                     batch_size=args.batch_size, progress=False)
    seconds = time.perf_counter() - start
    print(f"{len(wrong)} of {len(examples)} greedy outputs have slot errors; their candidates took {seconds:.0f} s",
          flush=True)

    with (shared_meteor() if args.meteor else nullcontext()) as meteor:  # one METEOR process for all rules
        def scored(name: str, texts: list[str]) -> dict:
            texts = [" ".join(t.split()) for t in texts]
            row = {"rule": name, **e2e_scores(texts, refs, meteor=meteor, with_meteor=args.meteor),
                   **slot_scores(mrs, texts),
                   "changed": sum(a != " ".join(b.split()) for a, b in zip(texts, greedy, strict=True))}
            print(json.dumps(row), flush=True)
            return row

        results = [scored("greedy", greedy)]
        sources = {"beams": lambda j: beams[j], "samples": lambda j: drawn[j],
                   "beams + samples": lambda j: [*beams[j], *drawn[j]]}
        for source, candidates in sources.items():
            for ties in ("order", "consensus"):
                lists = [[greedy[i], *candidates(j)] for j, i in enumerate(wrong)]
                picked, _ = rerank_by_slots([mrs[i] for i in wrong], lists, ties=ties)
                texts = list(greedy)
                for i, text in zip(wrong, picked, strict=True):
                    texts[i] = text
                results.append(scored(f"{source}, ties: {'first' if ties == 'order' else ties}", texts))

    print(f"\n{len(examples)} dev MRs, adapter {args.adapter}, {args.samples} samples, {describe()}")
    print("| candidates beside the greedy output | BLEU | NIST | METEOR | ROUGE_L | CIDEr | SER % | outputs changed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        meteor = "-" if r.get("METEOR") is None else f"{r['METEOR']:.4f}"
        print(f"| {r['rule']} | {r['BLEU']:.4f} | {r['NIST']:.4f} | {meteor} | {r['ROUGE_L']:.4f} | "
              f"{r['CIDEr']:.4f} | {r['SER']:.2f} | {r['changed']} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": describe(), "candidates_s": round(seconds, 1),
                                                   "results": results}, indent=1), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
