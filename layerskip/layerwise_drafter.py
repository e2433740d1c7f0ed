"""A drafter that walks the layers one at a time: dynamic early exit and layer skipping.

Per draft token it runs layers ``0..max_exit-1`` with a (possibly random) set of skipped
attention/MLP sublayers, and an exit criterion may stop it earlier (``layerskip.exit_criteria``).
Below the first layer any token of the round skipped or exited from, every K/V the draft wrote is
exactly the full model's; verification reuses those (and the hidden states at that layer) and
recomputes everything above for all pending tokens, so the verified output stays exactly the full
model's. Layers a token exited before get K/V by state propagation (CALM), so later draft tokens
attend to something meaningful; verification overwrites them.

Layer-skip drafts follow Draft & Verify (Zhang et al. 2023) and SWIFT (Xia et al. 2024): a skipped
sublayer is the identity on the residual stream.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from layerskip.draft_length import FixedLength, LengthPolicy
from layerskip.drafting import DecodeState, Draft, Drafter, DraftRound
from layerskip.exit_criteria import ExitCriterion, LayerView
from layerskip.model import NO_SKIP, SkipSet


class LayerwiseDrafter(Drafter):
    def __init__(
        self,
        max_exit: int,
        num_speculations: int,
        criterion: ExitCriterion | None = None,
        skip: SkipSet = NO_SKIP,
        skip_proportion: float = 0.0,
        length: LengthPolicy | None = None,
        seed: int = 0,
    ) -> None:
        if max_exit < 1:
            raise ValueError("the draft's exit layer must be >= 1")
        if not 0.0 <= skip_proportion < 1.0:
            raise ValueError("layer_skip_proportion must be in [0, 1)")
        self.max_exit = max_exit
        self.criterion = criterion
        self.skip = skip
        self.skip_proportion = skip_proportion
        self.length = length or FixedLength(num_speculations)
        self.max_tokens = self.length.max_tokens
        self.rng = random.Random(seed)
        self._limit = 0
        self.exit_layers: list[int] = []

    def describe(self) -> dict[str, object]:
        return {"exit_layer": self.max_exit, "num_speculations": self.length.k, "draft_length": self.length.name}

    def reset(self) -> None:
        self.exit_layers = []
        self.length.reset()

    def update(self, drafted: int, accepted: int) -> None:
        self.length.update(drafted, accepted, self._limit)

    def token_skips(self) -> SkipSet:
        if not self.skip_proportion:
            return self.skip
        dropped = {l for l in range(self.max_exit) if self.rng.random() < self.skip_proportion}
        return SkipSet(self.skip.attn | dropped, self.skip.mlp | dropped)

    def _draft_one(self, state: DecodeState, ids: torch.Tensor, slot: int) -> tuple[torch.Tensor, list[torch.Tensor], int, int]:
        """Run one token (``ids`` ``[1, 1]``): (logits at its exit ``[vocab]``, hidden states ``h_0..h_exit``, exit layer,
        first layer whose K/V or output is not the full model's)."""
        model = state.model
        skips = self.token_skips()
        hidden = model.embed(ids)
        states = [hidden]
        exact_below = self.max_exit
        if self.criterion is not None:
            self.criterion.start_token(self.max_exit)
        exit_layer = self.max_exit
        view = None
        for layer in range(self.max_exit):
            hidden = model.run_layers(hidden, layer, layer + 1, state.cache, slot, skip=skips)
            states.append(hidden)
            if (layer in skips.attn or layer in skips.mlp) and exact_below > layer:
                exact_below = layer
            if self.criterion is not None and layer + 1 < self.max_exit:
                view = LayerView(model, hidden, layer + 1)
                if self.criterion.should_exit(view):
                    exit_layer = layer + 1
                    break
        if exit_layer < self.max_exit:
            model.propagate_state(hidden, exit_layer, self.max_exit, state.cache, slot)
            exact_below = min(exact_below, exit_layer)
        if view is None or view.layer != exit_layer:
            view = LayerView(model, hidden, exit_layer)
        if self.criterion is not None:
            self.criterion.observe_exit(view)
        return view.logits, states, exit_layer, exact_below

    def propose(self, state: DecodeState, limit: int) -> Draft:
        self._limit = n_max = min(limit, self.length.round_limit())
        if n_max <= 0:
            return Draft()
        if self.max_exit > state.model.num_layers:
            raise ValueError(f"exit layer {self.max_exit} exceeds the model's {state.model.num_layers} layers")
        drafts = DraftRound(state, self.length)
        all_states: list[list[torch.Tensor]] = []
        reuse = self.max_exit
        for i in range(n_max):
            logits, states, exit_layer, exact_below = self._draft_one(state, drafts.last_ids, state.slot + i)
            self.exit_layers.append(exit_layer)
            reuse = min(reuse, exact_below)
            all_states.append(states)
            if not drafts.add(logits):
                break
        exit_hidden = torch.cat([s[reuse] for s in all_states], dim=1) if reuse > 0 else None
        return drafts.draft(reuse, exit_hidden)

    def settings(self) -> dict[str, Any]:
        return {"max_exit": self.max_exit, "skip": {"attn": sorted(self.skip.attn), "mlp": sorted(self.skip.mlp)},
                "skip_proportion": self.skip_proportion}
