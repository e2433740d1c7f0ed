"""The draft-adapter drafter: layers ``0..E-1`` of the frozen model, the adapter, the shared head.

Kangaroo (Liu et al. 2024, arXiv:2404.18911), behind the common drafter seam: everything the
early-exit drafter does (shared K/V below ``E``, exit hidden states handed to verification, length
policies, a frequency-ranked draft vocabulary), plus the adapter between ``h_E`` and the head.

The adapter attends over its own one-layer KV cache. Its entries at a slot are computed from that
slot's exact ``h_E``, so they stay valid once the token is verified; entries of rejected drafts are
overwritten later, as in the model's cache. Slots whose token never went through a draft pass (the
prompt, the last draft of a fully accepted round, and tokens a prompt-lookup round accepted) are
filled at the start of the next round by re-running layers ``0..E-1`` on them (every row of the batch
together, each from its own slot). That pass has other
shapes than the one that first wrote the model's cache there (the prompt's prefill, a verification of
k+1 tokens); where every row is computed the same way whatever the token count (the native and the
prepacked kernels, float32) it rewrites identical values, elsewhere values that may differ in the
last bit.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from layerskip.model.adapter import DraftAdapter, load_adapter, read_adapter_config
from layerskip.model.cache import KVCache
from layerskip.drafters.length import LengthPolicy
from layerskip.decoding.types import DecodeBatch, Draft, DraftReport
from layerskip.drafters.base import LengthState
from layerskip.drafters.early_exit import EarlyExitDrafter
from layerskip.kernels.linear import attach_norms, prepare_layer
from layerskip.model.decoder import LlamaForCausalLM


class AdapterState(LengthState):
    """A sequence's length policy and ``filled``: the slots ``0..filled-1`` whose adapter K/V are written."""

    def __init__(self, length: LengthPolicy) -> None:
        super().__init__(length)
        self.filled = 0


class AdapterDrafter(EarlyExitDrafter):
    def __init__(self, directory: str | Path, num_speculations: int, length: LengthPolicy | None = None,
                 draft_vocab: int | None = None) -> None:
        self.directory = Path(directory)
        self.adapter_config = read_adapter_config(self.directory)
        super().__init__(self.adapter_config.exit_layer, num_speculations, length, draft_vocab)
        self.adapter: DraftAdapter | None = None
        self._adapter_for: tuple[int, torch.dtype, torch.device] | None = None
        self._cache: KVCache | None = None
        self._cache_owner: KVCache | None = None

    def new_state(self) -> AdapterState:
        return AdapterState(self.length)

    def report(self, state: AdapterState | None = None) -> DraftReport:
        return replace(super().report(state), draft_adapter=str(self.directory))

    def ranking_directories(self, model: LlamaForCausalLM) -> list[Path | None]:
        return [self.directory, model.source_path]

    def bind(self, model: LlamaForCausalLM) -> None:
        super().bind(model)
        key = (id(model), model.dtype, model.device)
        if self._adapter_for != key:
            adapter = load_adapter(self.directory, model)
            with torch.no_grad():
                prepare_layer(adapter.block)  # the model's kernels: fused, prepacked where they apply
                attach_norms(adapter.block, model.config, model.device)
            self.adapter, self._adapter_for = adapter, key
            self._cache_owner = None

    def row_caches(self, cache: KVCache) -> list[KVCache]:
        return [self._cache] if self._cache is not None and self._cache_owner is cache else []

    def _adapter_cache(self, batch: DecodeBatch) -> KVCache:
        """The adapter's cache rows of ``batch`` (one adapter cache per root model cache, sized like it)."""
        root = batch.cache.root
        if self._cache_owner is not root:
            assert self.adapter is not None
            self._cache, self._cache_owner = self.adapter.new_cache(root), root
        assert self._cache is not None
        return self._cache.narrow(batch.cache.first_row, batch.cache.batch_size)

    def _adapt(self, batch: DecodeBatch, hidden: torch.Tensor, start: int | list[int]) -> torch.Tensor:
        """``h_E`` ``[batch, T, dim]`` at slots ``start..`` -> the adapter's output; writes its K/V there."""
        assert self.adapter is not None, "bind(model) first"
        cache = self._adapter_cache(batch)
        slots, cos, sin, mask = batch.model.slot_inputs(cache, start, hidden.shape[1], hidden.shape[0])
        return self.adapter(hidden, cos, sin, cache, slots, mask)

    def draft_logits(self, batch: DecodeBatch, hidden: torch.Tensor, step: int) -> torch.Tensor:
        return super().draft_logits(batch, self._adapt(batch, hidden, batch.starts(step)), step)

    def _fill(self, batch: DecodeBatch, starts: list[int], count: int) -> None:
        """Run layers ``0..E-1`` and the adapter over ``count`` tokens of each row from its slot ``starts[b]``
        (a row's tokens past its pending one are filler, overwritten by this round's draft)."""
        model = batch.model
        rows = [row.history[start : start + count] for row, start in zip(batch.rows, starts)]
        ids = torch.tensor([r + [r[-1]] * (count - len(r)) for r in rows], device=model.device)
        start: int | list[int] = starts[0] if len(set(starts)) == 1 else starts
        hidden = model.run_layers(model.embed(ids), 0, self.exit_layer, batch.cache, start)
        self._adapt(batch, hidden, start)

    def _catch_up(self, batch: DecodeBatch, states: Sequence[AdapterState]) -> None:
        """Fill the adapter's K/V for each row's verified slots ``filled..slot-1`` that no draft pass
        reached: together when the gaps are short (a round's leftovers), row by row otherwise (a prompt)."""
        self._adapter_cache(batch)
        filled = [min(state.filled, row.slot) for state, row in zip(states, batch.rows)]
        gaps = [row.slot - f for row, f in zip(batch.rows, filled)]
        longest = max(gaps)
        if 0 < longest <= self.max_tokens + 1:
            self._fill(batch, filled, longest)
        elif longest > 0:
            for b, gap in enumerate(gaps):
                if gap:
                    self._fill(batch.row(b), [filled[b]], gap)
        for state, row in zip(states, batch.rows):
            state.filled = row.slot

    def propose(self, batch: DecodeBatch, limits: Sequence[int], states: Sequence[AdapterState]) -> Draft:
        self.bind(batch.model)
        self._catch_up(batch, states)
        draft = super().propose(batch, limits, states)
        for state, row, tokens in zip(states, batch.rows, draft.tokens):
            state.filled = row.slot + len(tokens)  # the pending token and d_1..d_{n-1} went through the adapter
        return draft
