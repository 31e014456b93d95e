"""Does semantic reranking pay off on E2E? One beam search per setting, scored twice: its top beam and the
hypothesis ``--rerank slots`` picks (the first with the fewest slot errors), side by side on E2E dev.

Each setting decodes the n-best lists once (``lorakit.decode.generate_hypotheses``), so both columns come from
the same beams; ``lorakit generate --preset e2e [--rerank slots]`` writes the same files one at a time
(tests/test_decode.py checks the reranked CLI output against these functions).

    .venv/bin/python benchmarks/rerank_e2e.py --adapter runs/e2e/best --beams 10 --length-penalty 0.9 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from lorakit.hardware import describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", required=True, help="E2E adapter folder (merged into the fp32 base)")
    parser.add_argument("--data", default=os.environ.get("LORAKIT_DATA"), help="dataset root ($LORAKIT_DATA)")
    parser.add_argument("--limit", type=int, help="only the first N dev MRs (default: all 547)")
    parser.add_argument("--beams", type=int, nargs="+", default=[10])
    parser.add_argument("--length-penalty", type=float, nargs="+", default=[0.9])
    parser.add_argument("--no-repeat-ngram-size", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--outputs", help="folder for each setting's two prediction files")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    args = parser.parse_args(argv)

    from lorakit.decode import generate_hypotheses, preset
    from lorakit.decode.cli import load_for_generation
    from lorakit.decode.rerank import rerank_by_slots
    from lorakit.metrics.coco import shared_meteor
    from lorakit.metrics.e2e import e2e_scores
    from lorakit.metrics.ser import slot_scores
    from lorakit.tasks import get_task

    print(f"machine: {describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    examples = get_task("e2e").examples("dev", args.data)[:args.limit]
    mrs, refs = [ex.meta["mr"] for ex in examples], [list(ex.references) for ex in examples]
    prompts = [get_task("e2e").prompt(ex.source) for ex in examples]
    model, tokenizer = load_for_generation(args.model, [args.adapter], merge=True, device="cpu")
    results = []
    with shared_meteor() as meteor:  # one METEOR process for every scoring below
        for beams in args.beams:
            for lp in args.length_penalty:
                config = preset("e2e", num_beams=beams, length_penalty=lp,
                                no_repeat_ngram_size=args.no_repeat_ngram_size)
                start = time.perf_counter()
                hypotheses = generate_hypotheses(model, tokenizer, prompts, config, batch_size=args.batch_size,
                                                 progress=False)
                seconds = time.perf_counter() - start
                reranked, summary = rerank_by_slots(mrs, hypotheses)
                top = [h[0] for h in hypotheses]
                for name, texts in (("top beam", top), ("reranked", reranked)):
                    texts = [" ".join(t.split()) for t in texts]
                    scores = e2e_scores(texts, refs, meteor=meteor) | slot_scores(mrs, texts)
                    words = sum(len(t.split()) for t in texts) / len(texts)
                    results.append({"beams": beams, "length_penalty": lp, "pick": name, "decode_s": round(seconds, 1),
                                    "words": round(words, 2), **scores})
                    print(json.dumps(results[-1]), flush=True)
                    if args.outputs:
                        folder = Path(args.outputs)
                        folder.mkdir(parents=True, exist_ok=True)
                        tag = f"beam{beams}-lp{lp}-{name.replace(' ', '-')}"
                        (folder / f"{tag}.txt").write_text("".join(t + "\n" for t in texts), "utf-8")
                print(summary, flush=True)
    print(f"\n{len(examples)} dev MRs, adapter {args.adapter}, {describe()}")
    print("| beams | length penalty | pick | BLEU | NIST | METEOR | ROUGE_L | CIDEr | SER % | words | decode s |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['beams']} | {r['length_penalty']} | {r['pick']} | {r['BLEU']:.4f} | {r['NIST']:.4f} | "
              f"{r['METEOR']:.4f} | {r['ROUGE_L']:.4f} | {r['CIDEr']:.4f} | {r['SER']:.2f} | {r['words']} | "
              f"{r['decode_s']} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": describe(), "results": results}, indent=1), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
