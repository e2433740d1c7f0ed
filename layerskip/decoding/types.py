"""What the decoding loop, the drafters and verification pass each other: the batch of sequences being
decoded, a draft of every row, verification's verdict on a row, and a drafter's report on a sequence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from layerskip.decoding.sampling import SamplingConfig
from layerskip.model.cache import KVCache
from layerskip.model.decoder import LlamaForCausalLM


@dataclass
class Row:
    """One sequence being decoded (a row of the batch).

    ``history`` is prompt + generated tokens; its last entry is the pending token, which sits at
    cache slot ``slot`` and has not been fed through any layer yet. ``draft`` is the drafter's state for
    this sequence (``layerskip.drafters.base.Drafter.new_state``: its length policy, counters, ...).
    """

    history: list[int]
    slot: int
    sampling: SamplingConfig
    generator: torch.Generator | None
    stop_token_ids: frozenset[int]
    draft: Any = None

    @property
    def pending(self) -> int:
        return self.history[-1]


@dataclass
class DecodeBatch:
    """What a drafter may read: the model, the shared cache (row ``b`` of ``cache`` is ``rows[b]``) and
    the sequences."""

    model: LlamaForCausalLM
    cache: KVCache
    rows: list[Row]

    def __len__(self) -> int:
        return len(self.rows)

    def starts(self, offset: int = 0) -> int | list[int]:
        """Each row's pending slot + ``offset``: one int when every row agrees (one slot index vector for
        all rows, the batch-1 case), else one per row (``KVCache.slots``)."""
        slots = [row.slot + offset for row in self.rows]
        return slots[0] if all(s == slots[0] for s in slots) else slots

    @property
    def greedy(self) -> bool:
        """Every row greedy without an n-gram ban: choices need no per-row processing."""
        return all(not r.sampling.sample and not r.sampling.no_repeat_ngram_size for r in self.rows)

    def row(self, index: int) -> "DecodeBatch":
        """Row ``index`` alone, over its own row of the cache."""
        return DecodeBatch(self.model, self.cache.narrow(index, 1), [self.rows[index]])


@dataclass
class Draft:
    """Proposed tokens of every row and what verification may reuse.

    - ``tokens``: per row, the n_b drafted ids ``d_1..d_{n_b}`` (rows may draft different numbers, 0 included).
    - ``probs``: per row, ``[n_b, vocab]`` draft distributions q (sampling; None when greedy or n_b = 0).
    - ``reuse_layers``: R such that the draft wrote exact K/V for layers ``0..R-1`` at each row's pending
      token and ``d_1..d_{n_b-1}`` (0: nothing reusable, verification runs every layer).
    - ``exit_hidden``: ``h_R`` ``[batch, >= longest, dim]`` of the tokens each draft step fed (pending,
      d_1, ...; a row past its own draft carries filler) when R > 0.
    - ``forwards``: number of draft forward passes spent (one per step, for the whole batch).
    """

    tokens: list[list[int]] = field(default_factory=list)
    probs: list[torch.Tensor | None] = field(default_factory=list)
    reuse_layers: int = 0
    exit_hidden: torch.Tensor | None = None
    forwards: int = 0

    @classmethod
    def empty(cls, rows: int) -> "Draft":
        """No draft for any of ``rows`` rows."""
        return cls([[] for _ in range(rows)], [None] * rows)

    @property
    def longest(self) -> int:
        return max((len(t) for t in self.tokens), default=0)


@dataclass(frozen=True)
class LookupCounts:
    """Prompt lookup's share of a generation: rounds it drafted, tokens it drafted, tokens accepted."""

    rounds: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0


@dataclass(frozen=True)
class DraftReport:
    """What a drafter reports into the generation stats when a generation ends.

    ``exit_layers``: the exit layer of every drafted token, for drafters whose exit varies per token
    (dynamic exits); empty otherwise. ``lookup``: prompt lookup's counts, where it drafted.
    """

    num_speculations: int | None = None
    exit_layer: int | None = None
    draft_length: str | None = None
    draft_vocab: int | None = None
    draft_adapter: str | None = None
    exit_layers: tuple[int, ...] = ()
    lookup: LookupCounts | None = None
    #: ``draft_control="payoff"``: rounds kept without a draft, and drafting probes among them
    plain_rounds: int | None = None
    probes: int | None = None


@dataclass(frozen=True)
class Verdict:
    """``tokens``: the accepted drafts followed by one token of the target's; ``accepted``: how many drafts."""

    tokens: list[int]
    accepted: int
