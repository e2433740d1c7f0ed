"""The text of a growing token sequence, decoded incrementally (the offsets of vLLM's incremental
detokenizer): each new token is decoded together with the token(s) before it and only the text it adds
is appended, so n tokens cost O(n) decoding. While a token's bytes end inside a multi-byte character,
the text it adds is provisional (with the replacement character a full decode would show) and becomes
final once the character is complete."""

from __future__ import annotations

from typing import Callable


class IncrementalText:
    """``text``: the final text of the tokens pushed so far; ``push`` returns the provisional rest."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.tokens: list[int] = []
        self.text = ""
        self._prefix = 0  # tokens[_prefix:_read] is decoded again as context for the next token's text
        self._read = 0

    def push(self, token: int) -> str:
        """Append one token; commit its text when final and return the provisional rest ("" if none)."""
        self.tokens.append(int(token))
        context = self.decode(self.tokens[self._prefix : self._read])
        window = self.decode(self.tokens[self._prefix :])
        new = window[len(context) :]
        if new and not window.endswith("\ufffd"):
            self.text += new
            self._prefix, self._read = self._read, len(self.tokens)
            return ""
        return new
