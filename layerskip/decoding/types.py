"""What the decoding loop, the drafters and verification pass each other: the sequence's state, a draft,
verification's verdict, and a drafter's report (one batch row each)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from layerskip.decoding.sampling import SamplingConfig
from layerskip.model.cache import KVCache
from layerskip.model.decoder import LlamaForCausalLM


@dataclass
class DecodeState:
    """What a drafter may read: the model, the shared cache and the sequence so far.

    ``history`` is prompt + generated tokens; its last entry is the pending token, which sits at
    cache slot ``slot`` and has not been fed through any layer yet.
    """

    model: LlamaForCausalLM
    cache: KVCache
    history: list[int]
    slot: int
    sampling: SamplingConfig
    generator: torch.Generator | None
    stop_token_ids: frozenset[int]

    @property
    def pending(self) -> int:
        return self.history[-1]


@dataclass
class Draft:
    """Proposed tokens and what verification may reuse.

    - ``tokens``: the n drafted ids ``d_1..d_n``.
    - ``probs``: ``[n, vocab]`` draft distributions q (sampling only; None when greedy).
    - ``reuse_layers``: R such that the draft wrote exact K/V for layers ``0..R-1`` at the pending
      token and ``d_1..d_{n-1}`` (0: nothing reusable, verification runs every layer).
    - ``exit_hidden``: ``h_R`` of those n tokens ``[batch, n, dim]`` when R > 0.
    - ``forwards``: number of draft forward passes spent.
    """

    tokens: list[int] = field(default_factory=list)
    probs: torch.Tensor | None = None
    reuse_layers: int = 0
    exit_hidden: torch.Tensor | None = None
    forwards: int = 0

    def __len__(self) -> int:
        return len(self.tokens)


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
