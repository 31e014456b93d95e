"""METEOR 1.5, ROUGE-L and CIDEr through pycocoevalcap, fed the way the E2E scorer feeds them.

The E2E scorer (e2e-metrics ``measure_scores.py``) hands both outputs and references to the MS-COCO
caption evaluator, which first runs the Stanford PTBTokenizer jar (lowercased, punctuation tokens
removed) and then scores the tokenised text. The scorers themselves are pycocoevalcap's; only the jar
call is ours, to read stdin instead of writing temporary files into site-packages and to fail loudly if
the jar returns a different number of lines than it was given.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from types import TracebackType

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from .files import MetricsWarning
from .tokenize import COCO_PUNCTUATION, coco_tokenize

PTB_JAR = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR


def java() -> str | None:
    """The java executable pycocoevalcap would run (it calls plain ``java``), or None."""
    return shutil.which("java")


def one_line(text: str) -> str:
    """Whitespace collapsed: the jar and METEOR's stdio protocol are line-based, and ``|||`` is METEOR's separator."""
    return " ".join(text.replace("|||", " ").split())


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """The E2E scorer's tokenisation: the PTBTokenizer jar if Java is there, else lorakit's approximation."""
    if java() is None:
        return [coco_tokenize(t) for t in texts]
    cmd = ["java", "-cp", str(PTB_JAR), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    done = subprocess.run(cmd, input="\n".join(one_line(t) for t in texts) + "\n", capture_output=True,
                          encoding="utf-8", check=False)
    lines = done.stdout.split("\n")[: len(texts)]
    if done.returncode or len(lines) != len(texts):
        raise RuntimeError(f"PTBTokenizer failed (exit {done.returncode}, {len(lines)} lines for {len(texts)} "
                           f"texts): {done.stderr.strip()[-500:]}")
    return [" ".join(w for w in line.split() if w not in COCO_PUNCTUATION) for line in lines]


class Meteor15:
    """pycocoevalcap's meteor-1.5 process, kept open across calls and always shut down.

    Loading METEOR's paraphrase table is most of its cost, so scoring several subsets (WebNLG seen,
    unseen, all) reuses one process. pycocoevalcap's wrapper holds a lock that a failed call never
    releases and then takes again in ``__del__``: closing here releases it so a failure cannot hang.
    """

    def __enter__(self) -> Meteor15:
        self._meteor = Meteor()  # java -jar meteor-1.5.jar - - -stdio -l en -norm
        return self

    def score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        """Corpus METEOR: the jar's aggregate over all segments' statistics, not a mean of segment scores."""
        res = {i: [one_line(h)] for i, h in enumerate(hypotheses)}
        gts = {i: [one_line(r) for r in refs] for i, refs in enumerate(references)}
        try:
            return float(self._meteor.compute_score(gts, res)[0])
        except (ValueError, OSError) as err:  # the jar died: its stderr says why
            stderr = self.close()
            raise RuntimeError(f"METEOR (meteor-1.5.jar) failed: {stderr[-500:] or err}") from None

    def close(self) -> str:
        """Stop the jar (idempotent); returns what it wrote to stderr, for error messages."""
        proc = self._meteor.meteor_p
        if self._meteor.lock.locked():
            self._meteor.lock.release()
        if proc.poll() is None:
            proc.stdin.close()
            proc.kill()
        proc.wait()
        stderr = "" if proc.stderr.closed else proc.stderr.read().decode(errors="replace").strip()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()
        return stderr

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def shared_meteor() -> AbstractContextManager[Meteor15 | None]:
    """One METEOR process for several scorings inside the ``with`` block (pass it as ``meteor=``), or None
    without Java (each scoring then reports METEOR as missing): starting the jar costs seconds each time."""
    return Meteor15() if java() is not None else nullcontext(None)


def meteor_or_none(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                   meteor: Meteor15 | None = None) -> float | None:
    """METEOR, or None with a warning when Java is missing: a 0 would read as a real (terrible) score."""
    if java() is None:
        warnings.warn("java not found on PATH: METEOR (meteor-1.5.jar) is not computed and is reported as missing",
                      MetricsWarning, stacklevel=3)
        return None
    if meteor is not None:
        return meteor.score(hypotheses, references)
    with Meteor15() as fresh:
        return fresh.score(hypotheses, references)


def coco_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                meteor: Meteor15 | None = None, *, with_meteor: bool = True) -> dict[str, float | None]:
    """METEOR, ROUGE_L and CIDEr on PTB-tokenised, lowercased text, as the E2E scorer computes them
    (``with_meteor=False``: the last two only, without starting Java's METEOR)."""
    flat = [r for refs in references for r in refs]
    if java() is None:
        warnings.warn("java not found on PATH: ROUGE_L and CIDEr use lorakit's Python approximation of the "
                      "Stanford PTB tokenizer and may differ slightly from the official scorer", MetricsWarning,
                      stacklevel=2)
    tokens = ptb_tokenize([*hypotheses, *flat])
    res = {i: [tokens[i]] for i in range(len(hypotheses))}
    gts, start = {}, len(hypotheses)
    for i, refs in enumerate(references):
        gts[i] = tokens[start:start + len(refs)]
        start += len(refs)
    scores: dict[str, float | None] = {}
    if with_meteor:
        scores["METEOR"] = meteor_or_none([res[i][0] for i in res], [gts[i] for i in gts], meteor)
    return {
        **scores,
        "ROUGE_L": float(Rouge().compute_score(gts, res)[0]),
        "CIDEr": float(Cider().compute_score(gts, res)[0]),
    }
