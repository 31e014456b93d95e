"""Stop strings: the text of a growing token sequence as a client may see it (token-level stopping, EOS and
max tokens, is ``decode.batch.take_token``, shared with ``lorakit generate``)."""

from __future__ import annotations

from collections.abc import Sequence


class StopText:
    """The text of a growing token sequence as a client may see it: cut at the first stop string, and
    holding back a tail that may still become a stop string (or an incomplete UTF-8 character)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.sent = 0  # characters already handed out

    def update(self, text: str) -> tuple[str, bool]:
        """(new text to hand out, whether a stop string was reached) for the full decoded ``text`` so far."""
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            return self._take(text[:cut]), True
        safe = len(text)
        while safe > self.sent and text[safe - 1] == "\ufffd":  # a multi-byte character not finished yet
            safe -= 1
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    safe = min(safe, len(text) - k)
                    break
        return self._take(text[:safe]), False

    def finish(self, text: str) -> str:
        """Whatever was held back, once the sequence ends without a stop string."""
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        return self._take(text[:cut] if cut >= 0 else text)

    def _take(self, text: str) -> str:
        new = text[self.sent:] if len(text) > self.sent else ""
        self.sent = max(self.sent, len(text))
        return new
