"""Prompt lookup drafting: propose what followed the latest earlier occurrence of the current n-gram.

Prompt Lookup Decoding (Saxena 2023; transformers' ``prompt_lookup_num_tokens``, vLLM's n-gram
speculator): for n from ``max_ngram`` down to ``min_ngram``, find the most recent earlier
occurrence of the last n tokens of the sequence (prompt + generated) and propose the tokens that
followed it. Drafting costs no forward pass, so it pays wherever the output copies its input
(summaries, code edits, repeated identifiers) and costs one wasted verification slot elsewhere.

Draft length: fixed (at most ``num_speculations``), or, with ``factor``, proportional to how much of
the context the match covers (SuffixDecoding's ``max_spec_factor``, Oliaro et al. 2024,
arXiv:2411.04975): the matched occurrence is extended backwards while it keeps agreeing with the
sequence, over ``m`` tokens, and at most ``floor(factor * m)`` tokens are proposed. A long agreement is
a copy in progress and is likely to go on; a one-token coincidence proposes nothing. On SmolLM2's
greedy HumanEval continuations, ``factor=0.75`` (longest n-gram 8) accepted 90 % as many lookup
tokens as a fixed length of 8, with 0.70 of its lookup drafts accepted instead of 0.27
(BENCHMARKS.md).

A lookup draft is deterministic: its draft distribution is a one-hot at each proposed token, so
speculative sampling accepts ``d`` with probability ``min(1, p(d) / 1) = p(d)`` and resamples a
rejection from ``norm(max(p - onehot(d), 0))`` (``layerskip.decoding.verification``), which keeps the output
distribution exactly the target's. It computed no K/V, so verification runs every layer.

``LookupOrModelDrafter`` composes it with any other drafter: the lookup's draft when it matches,
the model's own draft (early exit, layer-wise, adapter, ...) otherwise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch

from layerskip.decoding.sampling import banned_ngram_tokens
from layerskip.decoding.types import DecodeBatch, Draft, DraftReport, LookupCounts
from layerskip.drafters.base import Drafter
from layerskip.model.cache import KVCache
from layerskip.model.decoder import LlamaForCausalLM


class NgramIndex:
    """Where each n-gram (``min_n <= n <= max_n``) of a growing token list last occurred.

    ``follows(tokens, n)`` is the position right after the most recent occurrence of the last n
    tokens that ends before the end of ``tokens`` (so at least one token followed it), or None.
    The index only grows: each call indexes the n-grams that ended since the previous call
    (``max_n - min_n + 1`` dictionary updates per new token). A different list starts it afresh.
    """

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n
        self.clear()

    def clear(self) -> None:
        self._source: list[int] | None = None
        self._indexed = 0  # n-grams ending at positions <= _indexed are in _after
        self._after: dict[tuple[int, ...], int] = {}

    def _catch_up(self, tokens: list[int]) -> None:
        if tokens is not self._source or len(tokens) < self._indexed:
            self.clear()
            self._source = tokens
        for end in range(self._indexed + 1, len(tokens)):
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self._after[tuple(tokens[end - n : end])] = end
        self._indexed = max(self._indexed, len(tokens) - 1)

    def follows(self, tokens: list[int], n: int) -> int | None:
        if not self.min_n <= n <= self.max_n or len(tokens) < n:
            return None
        self._catch_up(tokens)
        return self._after.get(tuple(tokens[len(tokens) - n :]))


class LookupState:
    """A sequence's n-gram index and its lookup counts: rounds it drafted, tokens drafted, accepted."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.index = NgramIndex(min_n, max_n)
        self.rounds = self.drafted = self.accepted = 0


class PromptLookupDrafter(Drafter):
    """Draft up to ``num_speculations`` tokens by n-gram lookup in each row's history (at most
    ``floor(factor * m)`` of them with ``factor``, m the match's backward extent; module docstring).

    Drafts end after a stop token, and before a token that ``no_repeat_ngram_size`` forbids (the
    target gives it probability 0: it would be rejected for sure). A match whose continuation is
    cut to nothing falls back on the next shorter n. Counts the rounds it drafted and what was
    accepted, per sequence (``report``).
    """

    def __init__(self, num_speculations: int, max_ngram: int = 3, min_ngram: int = 1, factor: float | None = None) -> None:
        if num_speculations < 1:
            raise ValueError("num_speculations must be >= 1")
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        if factor is not None and not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self.max_tokens = num_speculations
        self.factor = factor
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.index = NgramIndex(min_ngram, max_ngram)  # for ``lookup`` called without a sequence's own

    def new_state(self) -> LookupState:
        return LookupState(self.min_ngram, self.max_ngram)

    def update(self, state: LookupState, drafted: int, accepted: int) -> None:
        if drafted:
            state.rounds += 1
            state.drafted += drafted
            state.accepted += accepted

    def report(self, state: LookupState | None = None) -> DraftReport:
        counts = LookupCounts(state.rounds, state.drafted, state.accepted) if state is not None else LookupCounts()
        return DraftReport(num_speculations=self.max_tokens, lookup=counts)

    def lookup(self, history: list[int], limit: int, stop_ids: frozenset[int] = frozenset(),
               no_repeat_ngram_size: int = 0, index: NgramIndex | None = None) -> list[int]:
        """The proposed tokens (at most ``min(limit, num_speculations)``) after ``history``; ``index``: the
        sequence's n-gram index (the drafter's own by default)."""
        limit = min(limit, self.max_tokens)
        if limit <= 0:
            return []
        index = index or self.index
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            start = index.follows(history, n)
            if start is None:
                continue
            length = limit if self.factor is None else min(limit, int(self.factor * self.match_extent(history, start, n, limit)))
            tokens = admissible(history, history[start : start + length], stop_ids, no_repeat_ngram_size)
            if tokens:
                return tokens
        return []

    def match_extent(self, history: list[int], start: int, n: int, limit: int) -> int:
        """How many tokens the occurrence of the last ``n`` tokens that ends before ``start`` agrees with
        the end of ``history`` (n, extended backwards), counted only as far as ``limit`` tokens need
        (``factor`` set)."""
        assert self.factor is not None
        enough = int(limit / self.factor) + 1
        m, end = n, len(history)
        while m < enough and start - m - 1 >= 0 and history[start - m - 1] == history[end - m - 1]:
            m += 1
        return m

    def propose(self, batch: DecodeBatch, limits: Sequence[int], states: Sequence[LookupState]) -> Draft:
        tokens, probs = [], []
        vocab = batch.model.config.vocab_size
        for row, limit, state in zip(batch.rows, limits, states):
            found = self.lookup(row.history, limit, row.stop_token_ids, row.sampling.no_repeat_ngram_size, state.index)
            tokens.append(found)
            q = None
            if found and row.sampling.sample:  # q: one-hot at each proposed token, [n, vocab]
                q = torch.zeros(len(found), vocab, device=batch.model.device)
                q[torch.arange(len(found)), torch.tensor(found)] = 1.0
            probs.append(q)
        return Draft(tokens, probs, reuse_layers=0, exit_hidden=None, forwards=0)


def admissible(history: list[int], proposal: list[int], stop_ids: frozenset[int], no_repeat_ngram_size: int) -> list[int]:
    """``proposal`` up to and including its first stop token, and before its first token that
    ``no_repeat_ngram_size`` bans after ``history`` + the proposal so far."""
    out: list[int] = []
    for token in proposal:
        if no_repeat_ngram_size and token in banned_ngram_tokens(history + out, no_repeat_ngram_size):
            break
        out.append(token)
        if token in stop_ids:
            break
    return out


class ComposedState:
    """A sequence's lookup and model-drafter states, and which of the two drafted its last round."""

    def __init__(self, lookup: LookupState, model: Any) -> None:
        self.lookup, self.model = lookup, model
        self.last_was_lookup = False


class LookupOrModelDrafter(Drafter):
    """Per row, the lookup's draft when it proposes anything, else ``model``'s (any other drafter).

    ``update`` goes to whichever drafted the row's round, so the model drafter's length policy learns
    only from rounds it drafted. In a batch where some rows look up and others draft with the model,
    the model drafts for its rows only; the lookup rows' drafts computed no K/V, so that round's
    verification reuses nothing and runs every layer for all rows.
    """

    def __init__(self, lookup: PromptLookupDrafter, model: Drafter) -> None:
        self.lookup, self.model = lookup, model
        self.max_tokens = max(lookup.max_tokens, model.max_tokens)

    def new_state(self) -> ComposedState:
        return ComposedState(self.lookup.new_state(), self.model.new_state())

    def bind(self, model: LlamaForCausalLM) -> None:
        self.model.bind(model)

    def row_caches(self, cache: KVCache) -> list[KVCache]:
        return self.model.row_caches(cache)

    def propose(self, batch: DecodeBatch, limits: Sequence[int], states: Sequence[ComposedState]) -> Draft:
        found = self.lookup.propose(batch, limits, [s.lookup for s in states])
        for state, tokens in zip(states, found.tokens):
            state.last_was_lookup = bool(tokens)
        if all(found.tokens):
            return found
        model_limits = [0 if tokens else limit for tokens, limit in zip(found.tokens, limits)]
        drafted = self.model.propose(batch, model_limits, [s.model for s in states])
        if not any(found.tokens):
            return drafted
        tokens = [f or d for f, d in zip(found.tokens, drafted.tokens)]
        probs = [fq if f else dq for f, fq, dq in zip(found.tokens, found.probs, drafted.probs)]
        return Draft(tokens, probs, reuse_layers=0, exit_hidden=None, forwards=drafted.forwards)

    def update(self, state: ComposedState, drafted: int, accepted: int) -> None:
        if state.last_was_lookup:
            self.lookup.update(state.lookup, drafted, accepted)
        else:
            self.model.update(state.model, drafted, accepted)

    def report(self, state: ComposedState | None = None) -> DraftReport:
        """The model drafter's report (settings, exit layers) with the lookup's counts."""
        model = self.model.report(state.model if state is not None else None)
        return replace(model, lookup=self.lookup.report(state.lookup if state is not None else None).lookup)
