"""The draft-adapter drafter: layers ``0..E-1`` of the frozen model, the adapter, the shared head.

Kangaroo (Liu et al. 2024, arXiv:2404.18911), behind the common drafter seam: everything the
early-exit drafter does (shared K/V below ``E``, exit hidden states handed to verification, length
policies, a frequency-ranked draft vocabulary), plus the adapter between ``h_E`` and the head.

The adapter attends over its own one-layer KV cache. Its entries at a slot are computed from that
slot's exact ``h_E``, so they stay valid once the token is verified; entries of rejected drafts are
overwritten later, as in the model's cache. Slots whose token never went through a draft pass (the
prompt, the last draft of a fully accepted round, and tokens a prompt-lookup round accepted) are
filled at the start of the next round by re-running layers ``0..E-1`` on them. That pass has other
shapes than the one that first wrote the model's cache there (the prompt's prefill, a verification of
k+1 tokens); where every row is computed the same way whatever the token count (the native and the
prepacked kernels, float32) it rewrites identical values, elsewhere values that may differ in the
last bit.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from layerskip.model.adapter import DraftAdapter, load_adapter, read_adapter_config
from layerskip.model.cache import KVCache
from layerskip.drafters.length import LengthPolicy
from layerskip.decoding.types import DecodeState, Draft, DraftReport
from layerskip.drafters.early_exit import EarlyExitDrafter
from layerskip.errors import LayerskipError
from layerskip.kernels.linear import prepare_layer
from layerskip.model.decoder import LlamaForCausalLM


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
        self._filled = 0

    def report(self) -> DraftReport:
        return replace(super().report(), draft_adapter=str(self.directory))

    def ranking_directories(self, model: LlamaForCausalLM) -> list[Path | None]:
        return [self.directory, model.source_path]

    def bind(self, model: LlamaForCausalLM) -> None:
        super().bind(model)
        key = (id(model), model.dtype, model.device)
        if self._adapter_for != key:
            adapter = load_adapter(self.directory, model)
            with torch.no_grad():
                prepare_layer(adapter.block)  # the model's kernels: fused, prepacked where they apply
            self.adapter, self._adapter_for = adapter, key
            self._cache_owner = None

    def reset(self) -> None:
        super().reset()
        self._cache_owner = None

    def _adapter_cache(self, state: DecodeState) -> KVCache:
        """The adapter's cache for this generation (one per model cache), sized like it."""
        if self._cache_owner is not state.cache:
            assert self.adapter is not None
            self._cache = self.adapter.new_cache(state.cache)
            self._cache_owner, self._filled = state.cache, 0
        assert self._cache is not None
        return self._cache

    def _adapt(self, state: DecodeState, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """``h_E`` ``[1, T, dim]`` at slots ``start..`` -> the adapter's output; writes its K/V there."""
        assert self.adapter is not None, "bind(model) first"
        cache = self._adapter_cache(state)
        slots, cos, sin, mask = state.model.slot_inputs(cache, start, hidden.shape[1], hidden.shape[0])
        return self.adapter(hidden, cos, sin, cache, slots, mask)

    def draft_logits(self, state: DecodeState, hidden: torch.Tensor, slot: int) -> torch.Tensor:
        start = slot - hidden.shape[1] + 1
        return super().draft_logits(state, self._adapt(state, hidden, start), slot)

    def _catch_up(self, state: DecodeState) -> None:
        """Fill the adapter's K/V for verified slots ``filled..slot-1`` that no draft pass reached."""
        self._adapter_cache(state)
        filled = min(self._filled, state.slot)
        if filled < state.slot:
            model = state.model
            ids = torch.tensor([state.history[filled : state.slot]], device=model.device)
            hidden = model.run_layers(model.embed(ids), 0, self.exit_layer, state.cache, filled)
            self._adapt(state, hidden, filled)
        self._filled = state.slot

    def propose(self, state: DecodeState, limit: int) -> Draft:
        if state.cache.batch_size != 1:
            raise LayerskipError("draft adapters decode one sequence at a time")
        self.bind(state.model)
        self._catch_up(state)
        draft = super().propose(state, limit)
        self._filled = state.slot + len(draft)  # the pending token and d_1..d_{n-1} went through the adapter
        return draft
