"""The drafter interface: the seam every draft strategy stands behind.

A drafter proposes, for every row of a batch, up to that row's limit of tokens after its pending
token, and learns, through ``update``, how many the full model accepted. What it learns is per
sequence: ``new_state`` makes a sequence's state (its length policy, its counters), the decoding loop
keeps it with the sequence's row and hands it back with every call. Every draft strategy (fixed early
exit, dynamic exit, layer skipping, adaptive length, the draft adapter, prompt lookup, their
composition, the payoff controller) is a drafter; they all share one decoding loop
(``layerskip.decoding.engine``) and one verify/accept step (``layerskip.decoding.verification``).
``DraftRound`` is the token-by-token drafting the model-based drafters share.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch

from layerskip.decoding.sampling import process_logits, select
from layerskip.decoding.types import DecodeBatch, Draft, DraftReport
from layerskip.drafters.length import LengthPolicy
from layerskip.model.cache import KVCache
from layerskip.model.decoder import LlamaForCausalLM


class Drafter(ABC):
    """Propose draft tokens for a batch of rows; learn per sequence how many were accepted."""

    #: the most tokens one round may draft for a row (``num_speculations``)
    max_tokens: int

    def new_state(self) -> Any:
        """The state of a new sequence (what ``propose``, ``update`` and ``report`` get back for it)."""
        return None

    @abstractmethod
    def propose(self, batch: DecodeBatch, limits: Sequence[int], states: Sequence[Any]) -> Draft:
        """Draft at most ``min(limits[b], max_tokens)`` tokens after row b's pending token."""

    def update(self, state: Any, drafted: int, accepted: int) -> None:
        """Called after verification with a row's state and its numbers of drafted and accepted tokens."""

    def bind(self, model: LlamaForCausalLM) -> None:
        """Called with the target model before a generation: load or check what depends on it."""

    def report(self, state: Any) -> DraftReport:
        """Settings and a sequence's counts for its generation stats (read when it ends)."""
        return DraftReport(num_speculations=self.max_tokens)

    def row_caches(self, cache: KVCache) -> list[KVCache]:
        """Caches the drafter keeps with one row per row of ``cache`` (a root cache): the decoding loop
        moves their rows with the model's (``KVCache.move_row``)."""
        return []


class LengthState:
    """A sequence's draft length policy (a copy of the drafter's, learning from this sequence alone)
    and the limit of its last round."""

    def __init__(self, length: LengthPolicy) -> None:
        self.length = copy.deepcopy(length)
        self.length.reset()
        self.limit = 0

    def cap(self, limit: int) -> int:
        """This round's limit: ``limit`` within the policy's."""
        self.limit = min(limit, self.length.round_limit())
        return self.limit

    def update(self, drafted: int, accepted: int) -> None:
        self.length.update(drafted, accepted, self.limit)


class DraftRound:
    """The tokens of one draft round of a batch as they are chosen; every model-based drafter fills one.

    Each step feeds ``last_ids`` ``[batch, 1]`` (the pending tokens, then each row's latest draft) and
    ``add(logits)`` picks the next draft token of every row still drafting from the draft's raw logits
    ``[batch, vocab]`` (greedy or sampled, after the same processors verification applies, with the
    row's drafts so far as context); it says whether any row drafts on. A row stops at its limit, after
    a stop token, or when its length policy stops; its input then stays its last draft (the step after
    its last draft computes that draft's exit state, which verification reuses), and what a stopped row
    computes later is filler past its draft.

    Greedy drafting with nothing to decide per token on the host (no n-gram ban, no confidence
    policy) keeps the chosen ids on the device and reads them once, when the round ends: no host
    sync per draft token. Each row's draft is then cut at its limit and after its first stop token
    — the same draft, at the cost of the forwards spent past it.
    """

    def __init__(self, batch: DecodeBatch, limits: Sequence[int], lengths: Sequence[LengthPolicy]) -> None:
        self.batch, self.limits, self.lengths = batch, list(limits), lengths
        rows = batch.rows
        self.tokens: list[list[int]] = [[] for _ in rows]
        self.probs: list[list[torch.Tensor]] = [[] for _ in rows]
        self.open = [limit > 0 for limit in self.limits]
        self.steps = max(self.limits, default=0)
        self.last_ids = torch.tensor([[row.pending] for row in rows], device=batch.model.device)
        self.on_device = batch.greedy and not any(length.uses_confidence for length in lengths)
        self._chosen: list[torch.Tensor] = []
        self._inputs = [row.pending for row in rows]

    def add(self, logits: torch.Tensor) -> bool:
        if self.on_device:
            choice = logits.argmax(-1)
            self.last_ids = choice.view(-1, 1)
            self._chosen.append(choice)
            return len(self._chosen) < self.steps
        for b, row in enumerate(self.batch.rows):
            if not self.open[b]:
                continue
            tokens = self.tokens[b]
            processed = process_logits(logits[b : b + 1], row.sampling, [row.history + tokens])
            choice, q = select(processed, row.sampling, row.generator)
            token = int(choice[0])
            tokens.append(token)
            self._inputs[b] = token
            if q is not None:
                self.probs[b].append(q[0])
            keep = token not in row.stop_token_ids and len(tokens) < self.limits[b]
            if keep and self.lengths[b].uses_confidence:
                probs = q if q is not None else processed.softmax(-1)
                keep = self.lengths[b].keep_drafting(float(probs[0, token]))
            self.open[b] = keep
        self.last_ids = torch.tensor([[token] for token in self._inputs], device=self.batch.model.device)
        return any(self.open)

    @property
    def forwards(self) -> int:
        return len(self._chosen) or max((len(t) for t in self.tokens), default=0)

    def draft(self, reuse_layers: int, exit_hidden: torch.Tensor | None) -> Draft:
        """The round's ``Draft``; ``exit_hidden`` ``[batch, forwards, dim]`` is cut to the longest draft."""
        forwards = self.forwards
        if self._chosen:
            chosen = torch.stack(self._chosen, dim=1).tolist()  # the round's one host sync
            for b, row in enumerate(self.batch.rows):
                tokens = chosen[b][: self.limits[b]]
                stops = [i for i, token in enumerate(tokens) if token in row.stop_token_ids]
                self.tokens[b] = tokens[: stops[0] + 1] if stops else tokens
        longest = max((len(t) for t in self.tokens), default=0)
        if exit_hidden is not None:
            exit_hidden = exit_hidden[:, :longest]
        probs = [torch.stack(p) if p else None for p in self.probs]
        return Draft(self.tokens, probs, reuse_layers, exit_hidden, forwards)
