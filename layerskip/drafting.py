"""The drafter interface and the early-exit drafter.

A drafter proposes up to ``limit`` tokens after the pending token and learns, through
``update``, how many the full model accepted. Every draft strategy (fixed early exit, dynamic exit,
layer skipping, adaptive length) is a drafter; they all share one decoding loop
(``layerskip.generation``) and one verify/accept function (``layerskip.verification``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from layerskip.cache import ExitCache, KVCache
from layerskip.model import LlamaForCausalLM
from layerskip.sampling import SamplingConfig, process_logits, select


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


class Drafter(ABC):
    """Propose draft tokens; learn how many were accepted."""

    #: the most tokens one round may draft (``num_speculations``)
    max_tokens: int

    @abstractmethod
    def propose(self, state: DecodeState, limit: int) -> Draft:
        """Draft at most ``min(limit, max_tokens)`` tokens after ``state.pending``."""

    def update(self, drafted: int, accepted: int) -> None:
        """Called after verification with the number of drafted and accepted tokens."""

    def describe(self) -> dict[str, object]:
        """Settings reported in the generation stats."""
        return {"num_speculations": self.max_tokens}


class EarlyExitDrafter(Drafter):
    """Draft with layers ``0..exit_layer-1`` and the shared unembedding (LayerSkip, section 4.2.1).

    Each drafted token's K/V for the draft layers land in the shared cache and its ``h_E`` in the
    exit cache, so verification only runs the draft layers for the last draft token.
    """

    def __init__(self, exit_layer: int, num_speculations: int) -> None:
        if num_speculations < 1:
            raise ValueError("num_speculations must be >= 1")
        if exit_layer < 1:
            raise ValueError("exit_layer must be >= 1")
        self.exit_layer = exit_layer
        self.max_tokens = num_speculations
        self._exit_cache: ExitCache | None = None

    def describe(self) -> dict[str, object]:
        return {"exit_layer": self.exit_layer, "num_speculations": self.max_tokens}

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
        n_max = min(limit, self.max_tokens)
        if n_max <= 0:
            return Draft()
        if self.exit_layer >= state.model.num_layers:
            raise ValueError(f"exit_layer {self.exit_layer} must be below the model's {state.model.num_layers} layers")
        model, exit_cache = state.model, self._cache_for(state)
        context = list(state.history)
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        token = torch.tensor([[state.pending]], device=model.device)
        for i in range(n_max):
            hidden = model.run_layers(model.embed(token), 0, self.exit_layer, state.cache, state.slot + i)
            exit_cache.append(hidden)
            logits = process_logits(model.unembed(hidden)[:, -1].float(), state.sampling, [context])
            choice, q = select(logits, state.sampling, state.generator)
            next_id = int(choice[0])
            tokens.append(next_id)
            context.append(next_id)
            if q is not None:
                probs.append(q[0])
            if next_id in state.stop_token_ids:
                break
            token = choice.view(1, 1)
        return Draft(
            tokens=tokens,
            probs=torch.stack(probs) if probs else None,
            reuse_layers=self.exit_layer,
            exit_hidden=exit_cache.valid(),
            forwards=len(tokens),
        )
