"""The drafter interface: the seam every draft strategy stands behind.

A drafter proposes up to ``limit`` tokens after the pending token and learns, through
``update``, how many the full model accepted. Every draft strategy (fixed early exit, dynamic exit,
layer skipping, adaptive length, the draft adapter, prompt lookup) is a drafter; they all share one
decoding loop (``layerskip.decoding.loop``) and one verify/accept function
(``layerskip.decoding.verification``). ``DraftRound`` is the token-by-token drafting the model-based
drafters share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from layerskip.decoding.sampling import process_logits, select
from layerskip.decoding.types import DecodeState, Draft, DraftReport
from layerskip.drafters.length import LengthPolicy
from layerskip.model.decoder import LlamaForCausalLM


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
