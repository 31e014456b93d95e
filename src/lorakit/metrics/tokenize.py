"""Pure-Python stand-ins for the two word tokenizers the official NLG scorers run before scoring.

* :func:`coco_tokenize` approximates what the MS-COCO caption tools do before METEOR, ROUGE-L and CIDEr:
  the Stanford PTBTokenizer jar (``-preserveLines -lowerCase``), then dropping the punctuation tokens of
  pycocoevalcap's list. The real jar needs Java; this is the fallback when Java is missing, so ROUGE-L
  and CIDEr can still be reported. It keeps the jar's visible quirks because they change n-grams: ``£``
  becomes ``#`` and the lowercased ``-lrb-``/``-rrb-`` bracket tokens survive the punctuation filter
  (the filter lists them in upper case).
* :func:`treebank_tokenize` approximates ``nltk.word_tokenize`` (what the WebNLG/DART evaluation script
  tokenises with before TER), without pulling in NLTK and its downloaded sentence-splitter data.

Neither is the reference implementation: both are checked against the jar on the E2E scorer-check data
in the tests, which is what bounds the error they add.
"""

from __future__ import annotations

import re

# pycocoevalcap's PUNCTUATIONS, compared after lower-casing exactly as pycocoevalcap does (so its
# upper-case "-LRB-" etc. never match the jar's lowercased output: the quirk we reproduce).
COCO_PUNCTUATION = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Words whose final period is part of the word rather than the end of a sentence.
_ABBREVIATIONS = frozenset(["mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "inc", "ltd", "co"])

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r'(^|[\s(\[{<])"'), r"\1 `` "),  # opening double quote
    (re.compile(r'"'), " '' "),  # any other double quote closes
    (re.compile(r"\.\.+"), " ... "),  # the jar reads ".." as an ellipsis too
    (re.compile(r"(^|\s)\.(?=[^\W\d])"), r"\1. "),  # ".price" -> ". price" (but .5 stays a number)
    (re.compile(r"[?!;%]"), r" \g<0> "),
    (re.compile(r"(?<!\d)[,:]|[,:](?!\d)"), r" \g<0> "),  # keep 1,000 and 10:30 whole
    (re.compile(r"[()\[\]{}<>]"), r" \g<0> "),
    (re.compile(r"--+"), r" \g<0> "),
    (re.compile(r"(?<=\w)-(?=\s|$)|(?:^|(?<=\s))-(?=\w)"), " - "),  # a hyphen hanging off a word
    (re.compile(r"(?i)(\w)(n't)\b"), r"\1 \2"),  # don't -> do n't
    (re.compile(r"(?i)([^\s'])('(?:s|re|ve|ll|d|m))\b"), r"\1 \2"),  # it's -> it 's
    (re.compile(r"(?i)(^|\s)'(?!(?:s|re|ve|ll|d|m)\b)(?=[^\s'])"), r"\1` "),  # opening single quote
    (re.compile(r"(?<=[^\s'])'(?=[\s.,;:!?)\]]|$)"), " ' "),  # closing single quote / plural possessive
]
_ACRONYM = re.compile(r"(?i)^(?:[a-z]\.)+[a-z]?\.?$")  # u.s., a.m.


def _split(text: str, currency: bool) -> list[str]:
    if currency:  # the jar maps pound signs to "#" and other currency symbols to "$", as separate tokens
        text = re.sub(r"£", " # ", text)
        text = re.sub(r"[$€¥]", " $ ", text)
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    tokens = []
    for token in text.split():
        if (len(token) > 1 and token.endswith(".") and token != "..." and not _ACRONYM.match(token)
                and token[:-1].lower() not in _ABBREVIATIONS):
            tokens.extend((token[:-1], "."))
        else:
            tokens.append(token)
    return tokens


def coco_tokenize(text: str) -> str:
    """Lowercased PTB tokens with the COCO punctuation list removed, joined by single spaces."""
    tokens = (_BRACKETS.get(t, t).lower() for t in _split(text, currency=True))
    return " ".join(t for t in tokens if t not in COCO_PUNCTUATION)


def treebank_tokenize(text: str) -> str:
    """Case-preserving Treebank-style tokens (punctuation kept), joined by single spaces."""
    return " ".join(_split(text, currency=False))
