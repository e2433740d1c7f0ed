"""The early-exit drafter (LayerSkip, Elhoushi et al. 2024): layers ``0..E-1`` of the model itself, its
final norm and LM head (or a frequency-ranked subset of it, FR-Spec), sharing the model's KV cache."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from layerskip.decoding.types import DecodeBatch, Draft, DraftReport
from layerskip.drafters.base import Drafter, DraftRound, LengthState
from layerskip.drafters.draft_head import DraftHead, draft_subset, load_ranking
from layerskip.drafters.length import FixedLength, LengthPolicy
from layerskip.model.cache import ExitCache
from layerskip.model.config import check_exit_layer
from layerskip.model.decoder import LlamaForCausalLM


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
        self._exit_cache: ExitCache | None = None
        self._head: DraftHead | None = None
        self._head_dtype: tuple[torch.dtype, torch.device] | None = None

    def new_state(self) -> LengthState:
        return LengthState(self.length)

    def report(self, state: LengthState | None = None) -> DraftReport:
        return DraftReport(num_speculations=self.length.k, exit_layer=self.exit_layer, draft_length=self.length.name,
                           draft_vocab=self.draft_vocab)

    def ranking_directories(self, model: LlamaForCausalLM) -> list[Path | None]:
        """Where the draft vocabulary's frequency ranking is looked for."""
        return [model.source_path]

    def bind(self, model: LlamaForCausalLM) -> None:
        if self._head is not None and self._head.model is model and self._head_dtype == (model.dtype, model.device):
            return
        check_exit_layer(self.exit_layer, model.num_layers)
        subset = None
        if self.draft_vocab is not None:
            ranking = load_ranking(self.ranking_directories(model))
            subset = draft_subset(ranking, self.draft_vocab, model.config.eos_token_ids, model.config.vocab_size)
        self._head, self._head_dtype = DraftHead(model, subset), (model.dtype, model.device)

    def draft_logits(self, batch: DecodeBatch, hidden: torch.Tensor, step: int) -> torch.Tensor:
        """The draft's logits ``[batch, vocab]`` (float32) for the last of ``hidden`` = ``h_E`` ``[batch, T,
        dim]``, fed at draft step ``step`` (slot ``row.slot + step`` of each row)."""
        assert self._head is not None, "propose() binds the model first"
        return self._head(hidden[:, -1:])[:, -1]

    def update(self, state: LengthState, drafted: int, accepted: int) -> None:
        state.update(drafted, accepted)

    def _cache_for(self, batch: DecodeBatch) -> ExitCache:
        model, rows = batch.model, len(batch)
        cache = self._exit_cache
        if (
            cache is None
            or cache.states.shape[0] < rows
            or cache.states.shape[1] < self.max_tokens
            or cache.states.dtype != model.dtype
            or cache.states.device != model.device
        ):
            cache = self._exit_cache = ExitCache(rows, self.max_tokens, model.config.hidden_size, model.device, model.dtype)
        cache.clear(rows)
        return cache

    def propose(self, batch: DecodeBatch, limits: Sequence[int], states: Sequence[LengthState]) -> Draft:
        caps = [state.cap(limit) for state, limit in zip(states, limits)]
        if max(caps, default=0) <= 0:
            return Draft.empty(len(batch))
        model, exit_cache = batch.model, self._cache_for(batch)
        self.bind(model)
        drafts = DraftRound(batch, caps, [state.length for state in states])
        for step in range(drafts.steps):
            hidden = model.run_layers(model.embed(drafts.last_ids), 0, self.exit_layer, batch.cache, batch.starts(step))
            exit_cache.append(hidden)
            if not drafts.add(self.draft_logits(batch, hidden, step)):
                break
        return drafts.draft(self.exit_layer, exit_cache.valid())
