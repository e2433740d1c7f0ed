"""A drafter that walks the layers one at a time: dynamic early exit and layer skipping.

Per draft token it runs layers ``0..max_exit-1`` with a (possibly random) set of skipped
attention/MLP sublayers, and an exit criterion may stop it earlier (``layerskip.decoding.exit_criteria``).
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

import torch

from layerskip.drafters.length import FixedLength, LengthPolicy
from layerskip.decoding.types import DecodeState, Draft, DraftReport
from layerskip.drafters.base import Drafter, DraftRound
from layerskip.decoding.dynamic_exit import walk_layers
from layerskip.decoding.exit_criteria import ExitCriterion
from layerskip.model.decoder import NO_SKIP, SkipSet


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

    def report(self) -> DraftReport:
        return DraftReport(num_speculations=self.length.k, exit_layer=self.max_exit, draft_length=self.length.name,
                           exit_layers=tuple(self.exit_layers))

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

    def propose(self, state: DecodeState, limit: int) -> Draft:
        self._limit = n_max = min(limit, self.length.round_limit())
        if n_max <= 0:
            return Draft()
        if self.max_exit > state.model.num_layers:
            raise ValueError(f"exit layer {self.max_exit} exceeds the model's {state.model.num_layers} layers")
        drafts = DraftRound(state, self.length)
        first_exit = len(self.exit_layers)
        all_states: list[list[torch.Tensor]] = []
        reuse = self.max_exit
        for i in range(n_max):
            walk = walk_layers(state.model, drafts.last_ids, state.cache, state.slot + i, self.max_exit,
                               self.criterion, self.token_skips())
            self.exit_layers.append(walk.exit_layer)
            reuse = min(reuse, walk.exact_below)
            all_states.append(walk.states)
            if not drafts.add(walk.logits):
                break
        exit_hidden = torch.cat([s[reuse] for s in all_states], dim=1) if reuse > 0 else None
        draft = drafts.draft(reuse, exit_hidden)
        del self.exit_layers[first_exit + len(draft):]  # one exit per drafted token (none for those past a stop)
        return draft
