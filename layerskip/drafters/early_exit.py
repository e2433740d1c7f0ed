"""The early-exit drafter (LayerSkip, Elhoushi et al. 2024): layers ``0..E-1`` of the model itself, its
final norm and LM head (or a frequency-ranked subset of it, FR-Spec), sharing the model's KV cache."""

from __future__ import annotations

from pathlib import Path

import torch

from layerskip.decoding.types import DecodeState, Draft, DraftReport
from layerskip.drafters.base import Drafter, DraftRound
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
        check_exit_layer(self.exit_layer, model.num_layers)
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
