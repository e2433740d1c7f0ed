"""Terminal streamers: print text as tokens are produced.

``standard`` prints plain text; ``speculative`` colours the tokens that were accepted drafts
(green) differently from the tokens the full model produced itself (yellow). Text is decoded
incrementally from all tokens so far, so multi-byte characters split across tokens print whole.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TextIO

GREEN, YELLOW, RESET = "\033[32m", "\033[33m", "\033[0m"


class TextStreamer:
    def __init__(self, decode: Callable[[list[int]], str], out: TextIO = sys.stdout, colour: bool = False) -> None:
        self.decode = decode
        self.out = out
        self.colour = colour and "NO_COLOR" not in os.environ
        self.tokens: list[int] = []
        self.printed = 0

    def _new_text(self) -> str:
        text = self.decode(self.tokens)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return ""
        new, self.printed = text[self.printed :], len(text)
        return new

    def __call__(self, tokens: list[int], accepted_drafts: int) -> None:
        if not self.colour:
            self.tokens.extend(tokens)
            self.out.write(self._new_text())
        else:
            for i, token in enumerate(tokens):
                self.tokens.append(token)
                piece = self._new_text()
                if piece:
                    self.out.write((GREEN if i < accepted_drafts else YELLOW) + piece + RESET)
        self.out.flush()

    def end(self) -> None:
        rest = self.decode(self.tokens)[self.printed :]
        self.out.write(rest + "\n")
        self.out.flush()
