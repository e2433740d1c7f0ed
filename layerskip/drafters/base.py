"""The drafter interface and the early-exit drafter.

A drafter proposes up to ``limit`` tokens after the pending token and learns, through
``update``, how many the full model accepted. Every draft strategy (fixed early exit, dynamic exit,
layer skipping, adaptive length) is a drafter; they all share one decoding loop
(``layerskip.decoding.loop``) and one verify/accept function (``layerskip.decoding.verification``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import torch

from layerskip.model.cache import ExitCache, KVCache
from layerskip.drafters.draft_head import DraftHead, draft_subset, load_ranking
from layerskip.drafters.length import FixedLength, LengthPolicy
from layerskip.errors import LayerskipError
from layerskip.model.decoder import LlamaForCausalLM
from layerskip.decoding.sampling import SamplingConfig, process_logits, select


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


class Drafter(ABC):
    """Propose draft tokens; learn how many were accepted."""

    #: the most tokens one round may draft (``num_speculations``)
    max_tokens: int

    @abstractmethod
    def propose(self, state: DecodeState, limit: int) -> Draft:
        """Draft at most ``min(limit, max_tokens)`` tokens after ``state.pending``."""

    def update(self, drafted: int, accepted: int) -> None:
        """Called after verification with the number of drafted and accepted tokens."""

    def reset(self) -> None:
        """Called when a new generation starts."""

    def bind(self, model: LlamaForCausalLM) -> None:
        """Called with the target model before a generation: load or check what depends on it."""

    def report(self) -> DraftReport:
        """Settings and counts reported in the generation stats (read when a generation ends)."""
        return DraftReport(num_speculations=self.max_tokens)


class DraftRound:
    """The tokens of one draft round as they are chosen; every drafter fills one.

    ``add(logits)`` picks the next draft token from the draft's raw logits ``[vocab]`` (greedy or
    sampled, after the same processors verification applies, with the drafts so far as context)
    and says whether drafting may go on (not after a stop token, nor when the length policy stops).

    Greedy drafting with nothing to decide per token on the host (no n-gram ban, no confidence
    policy) keeps the chosen ids on the device and reads them once, when the round ends: no host
    sync per draft token. A stop token is then found at the end of the round, and the drafts after
    it are dropped — the same draft, at the cost of the forwards spent past it.
    """

    def __init__(self, state: DecodeState, length: LengthPolicy) -> None:
        self.state, self.length = state, length
        self.context = list(state.history)
        self.tokens: list[int] = []
        self.probs: list[torch.Tensor] = []
        self.last_ids = torch.tensor([[state.pending]], device=state.model.device)
        sampling = state.sampling
        self.on_device = not sampling.sample and not sampling.no_repeat_ngram_size and not length.uses_confidence
        self._chosen: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor) -> bool:
        if self.on_device:
            choice = logits.view(1, -1).argmax(-1)
            self.last_ids = choice.view(1, 1)
            self._chosen.append(choice)
            return True
        state = self.state
        processed = process_logits(logits.view(1, -1), state.sampling, [self.context])
        choice, q = select(processed, state.sampling, state.generator)
        token = int(choice[0])
        self.last_ids = choice.view(1, 1)  # the next draft input, kept on the device
        self.tokens.append(token)
        self.context.append(token)
        if q is not None:
            self.probs.append(q[0])
        keep = token not in state.stop_token_ids
        if keep and self.length.uses_confidence:
            probs = q if q is not None else processed.softmax(-1)
            keep = self.length.keep_drafting(float(probs[0, token]))
        return keep

    def draft(self, reuse_layers: int, exit_hidden: torch.Tensor | None) -> Draft:
        """The round's ``Draft``; ``exit_hidden`` ``[batch, forwards, dim]`` is cut to its tokens."""
        forwards = len(self._chosen) or len(self.tokens)
        if self._chosen:
            tokens = torch.cat(self._chosen).tolist()  # the round's one host sync
            stops = [i for i, token in enumerate(tokens) if token in self.state.stop_token_ids]
            self.tokens = tokens[: stops[0] + 1] if stops else tokens
        if exit_hidden is not None:
            exit_hidden = exit_hidden[:, : len(self.tokens)]
        probs = torch.stack(self.probs) if self.probs else None
        return Draft(self.tokens, probs, reuse_layers, exit_hidden, forwards)


class EarlyExitDrafter(Drafter):
    """Draft with layers ``0..exit_layer-1`` and the shared unembedding (LayerSkip, section 4.2.1).

    Each drafted token's K/V for the draft layers land in the shared cache and its ``h_E`` in the
    exit cache, so verification only runs the draft layers for the last draft token.
    ``draft_vocab``: score only the N most frequent tokens when drafting (``layerskip.drafters.draft_head``).
    """

    def __init__(self, exit_layer: int, num_speculations: int, length: LengthPolicy | None = None,
                 draft_vocab: int | None = None) -> None:
        if exit_layer < 1:
            raise ValueError("exit_layer must be >= 1")
        self.exit_layer = exit_layer
        self.length = length or FixedLength(num_speculations)
        self.max_tokens = self.length.max_tokens
        self.draft_vocab = draft_vocab
        self._limit = 0
        self._exit_cache: ExitCache | None = None
        self._head: DraftHead | None = None
        self._head_dtype: tuple[torch.dtype, torch.device] | None = None

    def report(self) -> DraftReport:
        return DraftReport(num_speculations=self.length.k, exit_layer=self.exit_layer, draft_length=self.length.name,
                           draft_vocab=self.draft_vocab)

    def ranking_directories(self, model: LlamaForCausalLM) -> list[Path | None]:
        """Where the draft vocabulary's frequency ranking is looked for."""
        return [model.source_path]

    def bind(self, model: LlamaForCausalLM) -> None:
        if self._head is not None and self._head.model is model and self._head_dtype == (model.dtype, model.device):
            return
        if self.exit_layer >= model.num_layers:
            raise LayerskipError(f"exit_layer {self.exit_layer} must be below the model's {model.num_layers} layers")
        subset = None
        if self.draft_vocab is not None:
            ranking = load_ranking(self.ranking_directories(model))
            subset = draft_subset(ranking, self.draft_vocab, model.config.eos_token_ids, model.config.vocab_size)
        self._head, self._head_dtype = DraftHead(model, subset), (model.dtype, model.device)

    def draft_logits(self, state: DecodeState, hidden: torch.Tensor, slot: int) -> torch.Tensor:
        """The draft's logits ``[vocab]`` (float32) for the last of ``hidden`` = ``h_E`` ``[1, T, dim]``
        at slots ``..slot``."""
        assert self._head is not None, "propose() binds the model first"
        return self._head(hidden[:, -1:])[0, -1]

    def reset(self) -> None:
        self.length.reset()

    def update(self, drafted: int, accepted: int) -> None:
        self.length.update(drafted, accepted, self._limit)

    def _cache_for(self, state: DecodeState) -> ExitCache:
        model, batch = state.model, state.cache.batch_size
        cache = self._exit_cache
        if (
            cache is None
            or cache.states.shape[0] != batch
            or cache.states.shape[1] < self.max_tokens
            or cache.states.dtype != model.dtype
            or cache.states.device != model.device
        ):
            cache = self._exit_cache = ExitCache(batch, self.max_tokens, model.config.hidden_size, model.device, model.dtype)
        cache.clear()
        return cache

    def propose(self, state: DecodeState, limit: int) -> Draft:
        self._limit = n_max = min(limit, self.length.round_limit())
        if n_max <= 0:
            return Draft()
        model, exit_cache = state.model, self._cache_for(state)
        self.bind(model)
        drafts = DraftRound(state, self.length)
        for i in range(n_max):
            hidden = model.run_layers(model.embed(drafts.last_ids), 0, self.exit_layer, state.cache, state.slot + i)
            exit_cache.append(hidden)
            if not drafts.add(self.draft_logits(state, hidden, state.slot + i)):
                break
        return drafts.draft(self.exit_layer, exit_cache.valid())
