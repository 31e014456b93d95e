"""Slot error rate (SER) of E2E outputs against their MRs: what BLEU does not see (a dropped price, a flipped
family-friendly).

Follows Dušek, Howcroft & Rieser (2019), "Semantic Noise Matters for Neural Natural Language Generation" (INLG;
github.com/tuetschek/e2e-cleaning, ``slot_error.py``): find every slot value an output mentions with
hand-written patterns, drop a mention lying inside a longer one ("Café" inside "Café Rouge", "family
friendly" inside "not family friendly"), let a span that several values could claim go to the MR's value,
then compare with the MR slot by slot. SER = (missing + added + wrong) / slots in the MRs, in percent.
A mentioned value that contradicts the MR's is *wrong* once; an MR value never mentioned is *missing*; a
value of a slot the MR lacks (or a second, different value beside the MR's) is *added*. Saying a value
again is no error (``The Eagle ... The Eagle is ...``).

Written from scratch; where it differs from that script:

* The patterns are our own. A pattern names every value it is compatible with, so equivalent forms count
  both ways: "cheap" realises ``less than £20`` and "less than £20" realises ``cheap`` (for priceRange theirs
  accepts only the first direction); vague words ("affordable", "good rating") fit several values and are
  wrong only against a value they cannot mean. "moderately priced" is not ``less than £20`` (theirs allows it).
* Venue names (name, near) also match without their leading "The", with or without a possessive
  apostrophe and with "Cafe" for "Café"; the delexicalised placeholders ``X-name``/``X-near`` (TGen's)
  and ``<name>``/``<near>`` realise the MR's own value. MR values missing from our tables (another
  venue, an unknown slot) are matched literally, so any ``slot[value]`` MR can be scored.
* Repeated mentions are never errors (their script counts them apart; on ``devset.csv`` it finds none).

On the original E2E dev references (``devset.csv``, 4,672 texts) their script gives SER 11.42%, ours 9.75%
(``tests/test_ser.py`` says more), lower mostly from the both-ways equivalences and name variants above.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypedDict

from ..data.common import DataFormatError, read_lines
from ..data.e2e import parse_mr, read_e2e_csv
from ..files import atomic_write
from .files import MetricsFileError

# ------------------------------------------------------------------------------------------ the patterns

NAMES = ("Alimentum", "Aromi", "Bibimbap House", "Blue Spice", "Browns Cambridge", "Clowns", "Cocum", "Cotto",
         "Fitzbillies", "Giraffe", "Green Man", "Loch Fyne", "Midsummer House", "Strada", "Taste of Cambridge",
         "The Cambridge Blue", "The Cricketers", "The Dumpling Tree", "The Eagle", "The Golden Curry",
         "The Golden Palace", "The Mill", "The Olive Grove", "The Phoenix", "The Plough", "The Punter",
         "The Rice Boat", "The Twenty Two", "The Vaults", "The Waterman", "The Wrestlers",
         "Travellers Rest Beefeater", "Wildwood", "Zizzi")
NEAR = ("All Bar One", "Avalon", "Burger King", "Café Adriatic", "Café Brazil", "Café Rouge", "Café Sicilia",
        "Clare Hall", "Crowne Plaza Hotel", "Express by Holiday Inn", "Rainbow Vegetarian Café",
        "Raja Indian Cuisine", "Ranch", "The Bakers", "The Portland Arms", "The Rice Boat", "The Six Bells",
        "The Sorrento", "Yippee Noodle Bar")
SLOTS = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")
_KEYS = {s.replace(" ", "").lower(): s for s in SLOTS} | {"eat_type": "eatType", "price_range": "priceRange",
                                                         "rating": "customer rating",
                                                         "family_friendly": "familyFriendly"}

FAM = r"(?:kids?|child(?:ren)?|famil(?:y|ies)|toddlers?|little ones)"
NOT = r"(?:not|\w+n['’]t)"  # not, isn't, doesn't, don't, aren't
NEG = rf"(?:{NOT}|non|none|no)"
FILL = (r"(?:(?:a|an|the|very|really|so|that|too|exactly|at all|quite|suitable|whole|considered|being|seen as"
        r"|regarded as|deemed|be|been|known to be|however|\w+ly)\s+)")  # "is not considered family friendly"
GAP = (r"(?:(?:that|which|is|are|was|were|has|have|had|been|of|as|at|a|an|very|quite|rather|pretty|really|fairly"
       r"|extremely|considered|reported|generally|only|just|so|currently|being|in the|on the|it|them|this|their"
       r"|experience|by|customers|diners|people|overall|somewhat|slightly|fall|falls|into|within)\s+){0,3}")
RATED = (r"(?:(?:customer|costumer|user|consumer|visitor|service|satisfaction|approval|star|food)[- ]){0,2}"
         r"(?:ratings?|rated|reviews?|reviewed|scores?|quality|standards?)")
PRICED = r"(?:price[ds]?|pricing|price[- ]range|price[- ]point|costs?|menu)"
N20, N25, N30 = r"£?\s*(?:20|twenty)", r"£?\s*(?:25|twenty[- ]five)", r"£?\s*(?:30|thirty)"


def _any(*alternatives: str) -> str:
    return "|".join(alternatives)


def _rated(words: str) -> str:
    """"low customer rating", "highly rated", "rating is low", "customers rated it as average"."""
    return _any(rf"(?:{words})(?:ly|er)?[- ]+{RATED}",
                rf"(?:ratings?|rated|rates?|reviews?|reviewed|scores?|scored|quality|standards?)\s+{GAP}"
                rf"(?:{words})(?:ly|er)?")


def _priced(words: str) -> str:
    """"moderately priced", "high price range", "prices are low", "the price range is average"."""
    return _any(rf"(?:{words})(?:ly)?[- ]+{PRICED}", rf"(?:price[- ]range|prices?|pricing|priced|costs?)\s+{GAP}"
                                                     rf"(?:{words})(?:ly)?")


def _stars(n: str) -> str:
    """"3 out of 5", "3 of 5 stars", "3/5", "three-star"."""
    return _any(rf"{n}\s*(?:(?:out\s+)?of\s*(?:5|five)|/\s*5)(?:[- ]stars?)?", rf"{n}[- ]stars?")


LOW, MID, HIGH = ("cheap", "less than £20"), ("moderate", "£20-25"), ("high", "more than £30")
R_LOW, R_AVG, R_HIGH = ("low", "1 out of 5"), ("average", "3 out of 5"), ("high", "5 out of 5")
# slot -> [(pattern, the values a match is compatible with; the first is the one reported)]
PATTERNS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "eatType": [(r"coffee[- ]?(?:shops?|houses?|bars?|places?)|caf[eé]s?|coffee", ("coffee shop",)),
                (r"pubs?|public[- ]houses?|gastropubs?", ("pub",)),
                (r"restaurants?", ("restaurant",))],
    "food": [(r"chinese|chines", ("Chinese",)), (r"english|british", ("English",)),
             (r"fast[- ]?food", ("Fast food",)), (r"french", ("French",)), (r"indian", ("Indian",)),
             (r"italian", ("Italian",)), (r"japanese|sushi", ("Japanese",))],
    "priceRange": [
        (_any(rf"(?:less\s+than|under|below|lower\s+than|up\s+to|no\s+more\s+than|max(?:imum)?\s+of)\s*{N20}",
              rf"{N20}\s*(?:pounds\s+)?or\s+(?:less|under)"), LOW[::-1]),
        (_any(rf"{N20}\s*(?:-+|–|to|and)\s*{N25}", rf"between\s+{N20}\s+and\s+{N25}"), MID[::-1]),
        (_any(rf"(?:more\s+than|over|above|at\s+least|upwards\s+of|in\s+excess\s+of|exceeding)\s*{N30}",
              rf"{N30}\s*(?:\+|(?:pounds\s+)?or\s+(?:more|over|above))"), HIGH[::-1]),
        (_any(r"(?:cheap|inexpensive|low[- ]cost|budget)(?:ly|er|est)?", _priced("low|cheap|inexpensive")), LOW),
        (_any(_priced("moderate|average|medium|mid|middle|fair|ok|okay|standard|mid[- ]range"), r"mid[- ]?range",
              r"moderate(?:ly)?"), MID),
        (_any(r"expensive|pricey|pricy|costly|high[- ]end|upscale|premium", _priced("high|expensive|premium")), HIGH),
        (_any(r"affordabl[ey]|reasonabl[ey](?:[- ]priced)?", _priced("reasonable|affordable|decent"),
              rf"{NEG}\s+(?:too\s+|very\s+|that\s+|overly\s+|so\s+)?(?:expensive|pricey|costly)"), LOW + MID),
        (rf"{NEG}\s+(?:too\s+|very\s+|that\s+|so\s+)?(?:cheap|inexpensive)", HIGH + MID)],
    "customer rating": [
        (_stars(r"(?:1|one)"), R_LOW[::-1]), (_stars(r"(?:3|three)"), R_AVG[::-1]),
        (_stars(r"(?:5|five)"), R_HIGH[::-1]),
        (_rated(r"low|poor|bad|terrible|awful|negative|one[- ]star"), R_LOW),
        (_rated(r"average|medium|moderate|mediocre|middling|mid|mid[- ]range|okay|ok|fair|decent|normal"
                r"|satisfactory|three[- ]star"), R_AVG),
        (_rated(r"high|excellent|great|very good|top|outstanding|superb|fantastic|brilliant|amazing|five[- ]star"
                r"|positive|exceptional"), R_HIGH),
        (_rated(r"good|well"), R_AVG + R_HIGH),
        (rf"(?:{NOT}|does\s+not)\s+(?:(?:have|has|got|get|received?|a|any|very|really|that|so)\s+){{0,3}}"
         rf"(?:good|great|high|well)(?:ly)?[- ]+{RATED}", R_LOW)],  # "does not have good reviews"
    "area": [(_any(r"(?:city|town)[- ]cent(?:re|er|ral)", r"cent(?:re|er)\s+of\s+(?:the\s+)?(?:city|town)",
                   r"(?:in|at|near)\s+the\s+cent(?:re|er)", r"centrally|downtown"), ("city centre",)),
             (_any(r"river[- ]?(?:side|front|bank)|waterfront",
                   r"(?:by|near|on|along|alongside|beside|next\s+to|close\s+to|off|at|overlooking)\s+the\s+"
                   r"(?:river|water)"), ("riverside",))],
    "familyFriendly": [
        (_any(rf"{FAM}[\s-]*(?:friendly|orient(?:at)?ed|welcoming)",
              r"family[- ](?:place|venue|establishment|atmosphere|environment|setting|dining|coffee\s+shop"
              r"|restaurant|pub|eatery|meals?)",
              r"(?:welcom(?:es?|ing)|allows?|accepts?|admits?|caters?\s+(?:to|for)|(?:suitable|good|great|ideal"
              r"|perfect|fine|fit)\s+for|open\s+to|friendly\s+(?:to|towards?|for|with))\s+(?:(?:to|the|your|all|whole"
              rf"|young|small|any|of|their|diners|guests|people|customers|patrons|parents|those|with)\s+){{0,2}}{FAM}",
              rf"{FAM}\s+(?:are|is)\s+(?:(?:always|very|also|more\s+than)\s+)?(?:welcome|allowed|accepted|permitted)",
              rf"(?:bring|take)\s+(?:the|your)\s+(?:whole\s+)?{FAM}", rf"for\s+(?:the\s+)?(?:whole\s+)?{FAM}",
              r"all\s+ages"), ("yes",)),
        (_any(rf"{NEG}[- ]+{FILL}{{0,2}}{FAM}[\s-]*(?:friendly|orient(?:at)?ed|welcoming)",
              rf"{FAM}[\s-]*unfriendly", rf"un(?:suitable|fit)\s+for\s+(?:\w+\s+)?{FAM}",
              r"adults?[- ]only|(?:only|just)\s+(?:for|allows?|admits?)\s+adults",
              r"adult[- ](?:establish(?:ment)?|venue|place|oriented|audience|clientele|crowd)",
              r"(?:an|for)\s+adults?(?![\s-]+(?:and|or|&|as\s+well))",  # not "for adults and children"
              rf"{NEG}\s+(?:for\s+|allowing\s+)?(?:the\s+)?{FAM}",
              rf"(?:{NOT}|do\s+not)\s+(?:bring|take)\s+(?:the|your)\s+{FAM}",
              rf"{NEG}\s+{FILL}{{0,2}}(?:suitable|good|great|ideal|recommended|appropriate|welcoming|friendly|open"
              r"|geared|conducive|aimed|catered?|designed|meant|intended|a\s+place)\s+(?:to|for|towards?|at|with)\s+"
              rf"{FILL}{{0,2}}{FAM}",
              rf"{FAM}\s+(?:(?:are|is)\s+not|\w+n['’]t|not)\s+(?:\w+\s+)?(?:welcome|allowed|accepted|permitted)",
              rf"(?:{NOT}|does\s+not|do\s+not|will\s+not|cannot)\s+(?:\w+\s+)?(?:welcome|allow|accept"
              rf"|cater(?:\s+(?:to|for))?|admit|permit)\s+(?:\w+\s+)?{FAM}"), ("no",))],
}
# the delexicalised forms systems write for a venue's name, as TGen's X-name or <name>
PLACEHOLDERS = {"name": r"x-?name|<name>|\[name\]", "near": r"x-?near|<near>|\[near\]"}


def _compile(pattern: str) -> re.Pattern[str]:
    """Whole words only, whatever the pattern's first and last characters (``\\b`` fails next to "£")."""
    return re.compile(rf"(?<!\w)(?:{pattern})(?!\w)", re.IGNORECASE)


@lru_cache(maxsize=4096)
def _venue(value: str) -> re.Pattern[str]:
    """A venue as people write it: "The" optional, "Brown's" for "Browns", "Cafe" for "Café"."""
    words = value.split()
    if len(words) > 1 and words[0].lower() == "the":
        words = words[1:]
        lead = r"(?:the\s+)?"
    else:
        lead = ""

    def word(w: str) -> str:
        w = re.escape(w).replace("é", "[eé]")
        return w[:-1] + "['’]?s" if w.endswith("s") and len(w) > 3 else w
    return _compile(lead + r"[\s-]+".join(map(word, words)))


_RULES = {slot: [(_compile(p), values) for p, values in rules] for slot, rules in PATTERNS.items()}
_PLACEHOLDERS = {slot: _compile(p) for slot, p in PLACEHOLDERS.items()}
_KNOWN = {"name": set(NAMES), "near": set(NEAR)} | {s: {v for _, vs in r for v in vs} for s, r in PATTERNS.items()}

# ------------------------------------------------------------------------------------------ the matcher


@dataclass
class SlotErrors:
    """One output's errors against its MR; ``wrong`` holds the value the text gives (``mr`` has the MR's)."""
    mr: list[tuple[str, str]]
    missing: list[tuple[str, str]] = field(default_factory=list)
    added: list[tuple[str, str]] = field(default_factory=list)
    wrong: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.missing) + len(self.added) + len(self.wrong)

    def __str__(self) -> str:
        given = dict(self.mr)
        parts = [f"missing {s}[{v}]" for s, v in self.missing] + [f"added {s}[{v}]" for s, v in self.added]
        parts += [f"wrong {s}[{v}] (MR: {given[s]})" for s, v in self.wrong]
        return "; ".join(parts) or "ok"


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    slot: str
    values: tuple[str, ...]


def canonical_mr(mr: str) -> list[tuple[str, str]]:
    """``parse_mr`` with E2E's slot names (``customer rating``, also from ``customerRating``/``rating``)."""
    return [(_KEYS.get(k.replace(" ", "").lower(), k), v) for k, v in parse_mr(mr)]


def _mentions(text: str, mr: dict[str, str]) -> list[_Mention]:
    found: list[_Mention] = []
    venues = {"name": NAMES, "near": NEAR}
    for slot in [*SLOTS, *(s for s in mr if s not in SLOTS)]:
        rules = list(_RULES.get(slot, []))
        if slot in venues:
            rules += [(_venue(v), (v,)) for v in venues[slot]]
        if slot in mr and mr[slot] not in _KNOWN.get(slot, ()):  # a value we have no pattern for: literally
            rules.append((_venue(mr[slot]), (mr[slot],)))
        if slot in _PLACEHOLDERS:
            rules.append((_PLACEHOLDERS[slot], (mr.get(slot, f"<{slot}>"),)))
        found += [_Mention(m.start(), m.end(), slot, values) for regex, values in rules
                  for m in regex.finditer(text)]
    return found


def _resolve(found: list[_Mention], mr: dict[str, str]) -> list[_Mention]:
    """Drop mentions inside longer ones; of those with the same span keep the MR's (else the first)."""
    kept = [m for m in found if not any(o.start <= m.start and m.end <= o.end and o.end - o.start > m.end - m.start
                                        for o in found)]
    spans: dict[tuple[int, int], _Mention] = {}
    for m in kept:
        other = spans.get((m.start, m.end))
        if other is None or (mr.get(m.slot) in m.values and mr.get(other.slot) not in other.values):
            spans[m.start, m.end] = m
    return sorted(spans.values(), key=lambda m: m.start)


def checked_mr(mr: str) -> list[tuple[str, str]]:
    """``canonical_mr``, refusing what the slot error rate cannot score: a slot named twice (also as
    ``customerRating`` and ``customer rating``) or given an empty value (it would always count as realised)."""
    pairs = canonical_mr(mr)
    if len(dict(pairs)) != len(pairs):
        raise ValueError(f"MR names a slot twice: {mr!r}")
    if empty := next((slot for slot, value in pairs if not value), None):
        raise ValueError(f"MR gives slot {empty!r} no value: {mr!r}")
    return pairs


def slot_errors(mr: str, text: str) -> SlotErrors:
    """Missing, added and wrong slot values of ``text`` against ``mr`` (E2E's ``name[X], eatType[pub]``)."""
    pairs = checked_mr(mr)
    given = dict(pairs)
    mentions = _resolve(_mentions(text, given), given)
    result = SlotErrors(pairs)
    for slot in [*given, *dict.fromkeys(m.slot for m in mentions if m.slot not in given)]:
        said = [m.values for m in mentions if m.slot == slot]
        others = list(dict.fromkeys(values[0] for values in said if given.get(slot) not in values))
        if slot in given and not any(given[slot] in values for values in said):  # the MR's value unsaid
            if not others:
                result.missing.append((slot, given[slot]))
                continue
            result.wrong.append((slot, others.pop(0)))
        result.added += [(slot, v) for v in others]
    return result


class SlotErrorRate(TypedDict):
    SER: float  # percent
    missing: int
    added: int
    wrong: int
    slots: int
    outputs: int
    with_errors: list[int]  # 0-based indices of the outputs with any error


def slot_error_rate(mrs: Sequence[str], texts: Sequence[str]) -> SlotErrorRate:
    """SER in percent over a corpus, the missing/added/wrong counts, the MRs' slot count and the indices of
    the outputs with any error (``with_errors``)."""
    if isinstance(mrs, str) or isinstance(texts, str):
        raise TypeError("mrs and texts must be lists of strings")
    if len(mrs) != len(texts):
        raise ValueError(f"{len(texts)} outputs for {len(mrs)} MRs")
    if not mrs:
        raise ValueError("no outputs to score")
    totals = {"missing": 0, "added": 0, "wrong": 0, "slots": 0}
    with_errors = []
    for index, (mr, text) in enumerate(zip(mrs, texts, strict=True)):
        errors = slot_errors(mr, text)
        for kind in ("missing", "added", "wrong"):
            totals[kind] += len(getattr(errors, kind))
        totals["slots"] += len(errors.mr)
        if errors.count:
            with_errors.append(index)
    ser = 100 * (totals["missing"] + totals["added"] + totals["wrong"]) / totals["slots"]
    return SlotErrorRate(SER=ser, missing=totals["missing"], added=totals["added"], wrong=totals["wrong"],
                         slots=totals["slots"], outputs=len(mrs), with_errors=with_errors)


def slot_report(mrs: Sequence[str], texts: Sequence[str], indices: Iterable[int]) -> str:
    """The offending outputs, one block each: line number (1-based, as in the outputs file), what is
    wrong, the MR and the output."""
    blocks = [f"line {i + 1}: {slot_errors(mrs[i], texts[i])}\n  MR:     {mrs[i]}\n  output: {texts[i]}\n"
              for i in indices]
    return "\n".join(blocks)


def write_slot_report(path: str | os.PathLike[str], mrs: Sequence[str], texts: Sequence[str],
                      result: SlotErrorRate) -> None:
    """:func:`slot_report` of ``result["with_errors"]`` to ``path``, after a one-line summary."""
    bad = result["with_errors"]
    head = (f"SER {result['SER']:.2f}%: {len(bad)} of {result['outputs']} outputs with slot errors (missing "
            f"{result['missing']}, added {result['added']}, wrong {result['wrong']}; {result['slots']} slots)\n\n")
    atomic_write(Path(path), (head + slot_report(mrs, texts, bad)).rstrip("\n").encode("utf-8") + b"\n")


def slot_scores(mrs: Sequence[str], texts: Sequence[str],
                report: str | os.PathLike[str] | None = None) -> dict[str, float]:
    """``{"SER": percent}`` to print beside the E2E metrics; with ``report``, the offending outputs go there."""
    result = slot_error_rate(mrs, texts)
    if report is not None:
        write_slot_report(report, mrs, texts, result)
    return {"SER": result["SER"]}


def read_mrs(path: str | os.PathLike[str]) -> list[str]:
    """MRs one per line (``name[X], eatType[pub]``), or a ``.csv`` in E2E's layout (its MRs in first-appearance
    order, the order of ``lorakit evaluate --write-refs``); a malformed MR is an error naming its line."""
    csv = Path(path).suffix.lower() == ".csv"
    try:
        if csv:
            lines = [mr for mr, _ in read_e2e_csv(path, require_refs=False)]
        else:
            lines = [line.strip() for line in read_lines(path)]
    except DataFormatError as err:
        raise MetricsFileError(str(err)) from None
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise MetricsFileError(f"{path}: MRs file is empty")
    for number, line in enumerate(lines, start=1):
        try:
            checked_mr(line)
        except ValueError as err:
            raise MetricsFileError(f"{path}: {'MR' if csv else 'line'} {number}: {err}") from None
    return lines
