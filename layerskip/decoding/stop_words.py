"""Stop words found in linear time: the generated text is built incrementally, token by token.

Each new token is decoded together with the token(s) before it and only the text it adds is
appended (the offsets of vLLM's incremental detokenizer), so a generation of n tokens costs O(n)
decoding however often it is checked; a stop word is looked for only where it could have just
been completed (the new text and the ``longest - 1`` characters before it). While a token's bytes
end inside a multi-byte character, the text it adds is provisional (with the replacement character
a full decode would show) and is fixed once the character is complete.
"""

from __future__ import annotations

from typing import Callable, Sequence


class StopWords:
    def __init__(self, words: Sequence[str], decode: Callable[[list[int]], str]) -> None:
        self.words = tuple(w for w in words if w)  # an empty string would match everywhere: it is no stop word
        self.longest = max((len(w) for w in self.words), default=0)
        self.decode = decode
        self.tokens: list[int] = []
        self.text = ""
        self._prefix = 0  # tokens[_prefix:_read] is decoded again as context for the next token's text
        self._read = 0

    def push(self, tokens: Sequence[int]) -> int | None:
        """Append ``tokens``; if a stop word is completed by one of them, the number of them to keep
        (through the completing token; the rest are not appended), else None."""
        if not self.words:
            return None
        for i, token in enumerate(tokens):
            start = max(0, len(self.text) - self.longest + 1)
            self.tokens.append(int(token))
            provisional = self._extend_text()
            text = self.text + provisional
            if any(word in text[start:] for word in self.words):
                return i + 1
        return None

    def _extend_text(self) -> str:
        """Commit the new tokens' text when it is final; return the provisional rest ("" if none)."""
        context = self.decode(self.tokens[self._prefix : self._read])
        window = self.decode(self.tokens[self._prefix :])
        new = window[len(context) :]
        if new and not window.endswith("\ufffd"):
            self.text += new
            self._prefix, self._read = self._read, len(self.tokens)
            return ""
        return new
