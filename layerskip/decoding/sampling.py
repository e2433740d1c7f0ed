"""Token selection: greedy or sampled, after the logits processors upstream exposes.

Processors run on every position with that position's own context (prompt + accepted tokens +
the drafts before it), never on the last token only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingConfig:
    """``sample=False`` is greedy; otherwise temperature, then top-k (0 = off), then top-p (1 = off)."""

    sample: bool = False
    temperature: float = 0.6
    top_k: int = 0
    top_p: float = 0.9
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        if self.sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.no_repeat_ngram_size < 0:
            raise ValueError("no_repeat_ngram_size must be >= 0")


def banned_ngram_tokens(context: Sequence[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in ``context`` (as transformers does)."""
    if n <= 0 or len(context) < n - 1:
        return []
    if n == 1:
        return list(set(context))
    prefix = tuple(context[len(context) - n + 1 :])
    return [
        context[i + n - 1]
        for i in range(len(context) - n + 1)
        if tuple(context[i : i + n - 1]) == prefix
    ]


def process_logits(
    logits: torch.Tensor, config: SamplingConfig, contexts: Sequence[Sequence[int]] | None = None
) -> torch.Tensor:
    """logits ``[N, vocab]`` (float32) -> processed logits ``[N, vocab]``; row i uses ``contexts[i]``."""
    if config.no_repeat_ngram_size and contexts is not None:
        logits = logits.clone()
        for row, context in enumerate(contexts):
            banned = banned_ngram_tokens(context, config.no_repeat_ngram_size)
            if banned:
                logits[row, banned] = NEG_INF
    if not config.sample:
        return logits
    logits = logits / config.temperature
    if config.top_k and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already cover top_p; always keep the first
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, NEG_INF)
    return logits


def probabilities(processed: torch.Tensor) -> torch.Tensor:
    """Processed logits ``[N, vocab]`` -> distribution ``[N, vocab]`` (float32)."""
    return processed.float().softmax(-1)


def select(
    processed: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Choose one token per row: ``([N], probs [N, vocab] or None when greedy)``."""
    if not config.sample:
        return processed.argmax(-1), None
    probs = probabilities(processed)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1), probs
