"""Tasks tie a dataset to how the model sees it: adding one is a short declaration here."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .data import Example, load_dart, load_e2e, load_webnlg, training_pairs


@dataclass(frozen=True)
class NLGTask:
    """Data-to-text: the model reads the linearised input and a newline, then writes the text."""

    name: str
    load: Callable[..., list[Example]]
    description: str

    def prompt(self, source: str) -> str:
        return f"{source}\n"

    def examples(self, split: str, root: str | os.PathLike | None = None) -> list[Example]:
        return self.load(split, root)

    def train_pairs(self, root: str | os.PathLike | None = None) -> list[tuple[str, str]]:
        """(prompt, target): one pair per reference."""
        return [(self.prompt(source), target) for source, target in training_pairs(self.examples("train", root))]


TASKS: dict[str, NLGTask] = {
    "e2e": NLGTask("e2e", load_e2e, "E2E NLG Challenge (restaurant meaning representations)"),
    "webnlg": NLGTask("webnlg", load_webnlg, "WebNLG 2017 (DBpedia triples)"),
    "dart": NLGTask("dart", load_dart, "DART (open-domain triples)"),
}


def get_task(name: str) -> NLGTask:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name]
