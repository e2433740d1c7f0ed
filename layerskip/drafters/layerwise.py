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

import copy
import random
from typing import Sequence

import torch

from layerskip.drafters.length import FixedLength, LengthPolicy
from layerskip.decoding.types import DecodeBatch, Draft, DraftReport
from layerskip.drafters.base import Drafter, DraftRound, LengthState
from layerskip.decoding.dynamic_exit import walk_layers
from layerskip.decoding.exit_criteria import ExitCriterion
from layerskip.model.decoder import NO_SKIP, SkipSet


class LayerwiseState(LengthState):
    """A sequence's length policy, its exit criterion (a copy: criteria learn across tokens) and the exit
    layer of each token it drafted."""

    def __init__(self, length: LengthPolicy, criterion: ExitCriterion | None) -> None:
        super().__init__(length)
        self.criterion = copy.deepcopy(criterion)
        self.exit_layers: list[int] = []


class LayerwiseDrafter(Drafter):
    """Draft with layers ``0..max_exit-1`` walked one at a time (module docstring). A random skip set
    (``skip_proportion``) is drawn per draft step, the same for every row of the batch."""

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

    def new_state(self) -> LayerwiseState:
        return LayerwiseState(self.length, self.criterion)

    def report(self, state: LayerwiseState | None = None) -> DraftReport:
        return DraftReport(num_speculations=self.length.k, exit_layer=self.max_exit, draft_length=self.length.name,
                           exit_layers=tuple(state.exit_layers) if state is not None else ())

    def update(self, state: LayerwiseState, drafted: int, accepted: int) -> None:
        state.update(drafted, accepted)

    def token_skips(self) -> SkipSet:
        if not self.skip_proportion:
            return self.skip
        dropped = {l for l in range(self.max_exit) if self.rng.random() < self.skip_proportion}
        return SkipSet(self.skip.attn | dropped, self.skip.mlp | dropped)

    def propose(self, batch: DecodeBatch, limits: Sequence[int], states: Sequence[LayerwiseState]) -> Draft:
        caps = [state.cap(limit) for state, limit in zip(states, limits)]
        if max(caps, default=0) <= 0:
            return Draft.empty(len(batch))
        if self.max_exit > batch.model.num_layers:
            raise ValueError(f"exit layer {self.max_exit} exceeds the model's {batch.model.num_layers} layers")
        drafts = DraftRound(batch, caps, [state.length for state in states])
        criteria = [state.criterion for state in states] if self.criterion is not None else None
        exits: list[list[int]] = []
        all_states: list[list[torch.Tensor]] = []
        reuse = self.max_exit
        for step in range(drafts.steps):
            walk = walk_layers(batch.model, drafts.last_ids, batch.cache, batch.starts(step), self.max_exit,
                               criteria, self.token_skips())
            exits.append(walk.exit_layers)
            reuse = min(reuse, walk.exact_below)
            all_states.append(walk.states)
            if not drafts.add(walk.logits):
                break
        exit_hidden = torch.cat([s[reuse] for s in all_states], dim=1) if reuse > 0 else None
        draft = drafts.draft(reuse, exit_hidden)
        for b, (state, tokens) in enumerate(zip(states, draft.tokens)):  # one exit per drafted token
            state.exit_layers.extend(step_exits[b] for step_exits in exits[: len(tokens)])
        return draft
