"""A completion's text as its tokens come, with stop strings: what ``LLM.stream`` does, piece by piece
for a server (``layerskip.decoding.detokenize.IncrementalText``; a possible stop string's beginning is
held back until it is known not to be one, and the text ends before the first stop string)."""

from __future__ import annotations

from typing import Callable, Sequence

from layerskip.decoding.detokenize import IncrementalText


def final_text(text: str, stop_reason: str, stops: Sequence[str]) -> str:
    """A finished completion's text: ``text`` cut before its first stop string when one stopped it."""
    if stop_reason == "stop_word":
        found = [text.find(s) for s in stops if s in text]
        if found:
            return text[: min(found)]
    return text


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str]) -> None:
        self.decode, self.stops = decode, tuple(stops)
        self._text = IncrementalText(decode)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self.sent = 0

    def push(self, token_ids: Sequence[int]) -> str:
        """The text that is ready after these tokens ("" if none)."""
        for token in token_ids:
            self._text.push(token)
        text = self._text.text
        found = [text.find(s) for s in self.stops if s in text]
        ready = min(found) if found else len(text) - self._hold
        if ready <= self.sent:
            return ""
        piece, self.sent = text[self.sent : ready], ready
        return piece

    def finish(self, token_ids: list[int], stop_reason: str) -> str:
        """The rest of the text once the completion has ended with ``token_ids``."""
        final = final_text(self.decode(token_ids), stop_reason, self.stops)
        rest = final[self.sent :] if len(final) > self.sent else ""
        self.sent = max(self.sent, len(final))
        return rest
