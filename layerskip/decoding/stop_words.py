"""Stop words found in linear time: the generated text is built incrementally, token by token
(``layerskip.decoding.detokenize.IncrementalText``), and a stop word is looked for only where it could
have just been completed (the new text and the ``longest - 1`` characters before it), provisional text
of a split multi-byte character included.
"""

from __future__ import annotations

from typing import Callable, Sequence

from layerskip.decoding.detokenize import IncrementalText


class StopWords:
    def __init__(self, words: Sequence[str], decode: Callable[[list[int]], str]) -> None:
        self.words = tuple(w for w in words if w)  # an empty string would match everywhere: it is no stop word
        self.longest = max((len(w) for w in self.words), default=0)
        self.incremental = IncrementalText(decode)

    @property
    def tokens(self) -> list[int]:
        """The tokens pushed so far."""
        return self.incremental.tokens

    @property
    def text(self) -> str:
        """The final text of the tokens pushed so far."""
        return self.incremental.text

    def push(self, tokens: Sequence[int]) -> int | None:
        """Append ``tokens``; if a stop word is completed by one of them, the number of them to keep
        (through the completing token; the rest are not appended), else None."""
        if not self.words:
            return None
        for i, token in enumerate(tokens):
            start = max(0, len(self.text) - self.longest + 1)
            provisional = self.incremental.push(token)
            text = self.text + provisional
            if any(word in text[start:] for word in self.words):
                return i + 1
        return None
