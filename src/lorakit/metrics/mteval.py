"""Corpus BLEU and NIST as mteval-v13a computes them (the E2E scorer's ``pymteval`` port of it).

BLEU is sacrebleu's: its ``13a`` tokenizer is mteval-v13a's, and its corpus BLEU has the same clipping
against the maximum count over references and the same closest-reference length (ties to the shorter).
NIST has no well-kept Python implementation with mteval's definition (NLTK's ``corpus_nist`` scores each
segment against its single best reference instead of clipping against all of them), so it is written
here, on sacrebleu's tokenizer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

_TOKENIZE = Tokenizer13a()
# mteval-v13a's length penalty: beta makes the penalty 0.5 when the output is 2/3 of the reference length.
_NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


def ref_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-input reference lists -> sacrebleu's one stream per reference slot, None where an input has fewer."""
    width = max(len(refs) for refs in references)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *, lowercase: bool) -> float:
    """BLEU in percent; no smoothing, so a corpus with no matching 4-gram scores 0 as in mteval."""
    bleu = BLEU(tokenize="13a", lowercase=lowercase, smooth_method="none", force=True)
    return bleu.corpus_score(list(hypotheses), ref_streams(references)).score


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], *, max_n: int = 5,
                lowercase: bool = True) -> float:
    """NIST (Doddington 2002) with mteval-v13a's information weights and length penalty.

    Information weights come from n-gram counts over every reference of the corpus; an output n-gram
    scores its weight as many times as it occurs, clipped by its largest count in any one reference of
    its input. The length penalty compares output length with the mean reference length per input.
    """

    def tok(text: str) -> list[str]:
        return _TOKENIZE(text.lower() if lowercase else text).split()

    hyps = [tok(h) for h in hypotheses]
    refs = [[tok(r) for r in rs] for rs in references]
    counts: Counter[tuple[str, ...]] = Counter()
    for rs in refs:
        for ref in rs:
            counts[()] += len(ref)
            for n in range(1, max_n + 1):
                counts.update(_ngrams(ref, n))

    hit_info = [0.0] * max_n
    hyp_total = [0] * max_n
    for hyp, rs in zip(hyps, refs, strict=True):
        for n in range(1, max_n + 1):
            hyp_ngrams = _ngrams(hyp, n)
            best: Counter[tuple[str, ...]] = Counter()
            for ref in rs:
                best |= _ngrams(ref, n)  # | keeps the maximum count per n-gram
            for gram, count in hyp_ngrams.items():
                hits = min(count, best[gram])
                if hits:
                    hit_info[n - 1] += hits * math.log2(counts[gram[:-1]] / counts[gram])
            hyp_total[n - 1] += hyp_ngrams.total()
    score = sum(info / total for info, total in zip(hit_info, hyp_total, strict=True) if total)

    sys_len = sum(len(h) for h in hyps)
    ref_len = sum(sum(len(r) for r in rs) / len(rs) for rs in refs)
    ratio = sys_len / ref_len if ref_len else 0.0
    if ratio <= 0:
        return 0.0
    return score * (1.0 if ratio >= 1 else math.exp(-_NIST_BETA * math.log(ratio) ** 2))
