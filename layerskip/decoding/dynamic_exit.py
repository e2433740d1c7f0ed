"""Walking tokens up the layers until an exit criterion stops each: the step shared by autoregressive
dynamic exit (the decoding loop with a criterion) and the layer-wise drafter.

Later tokens attend to every earlier position at every layer, so a token that exits at layer e
must still leave K/V in layers e..max-1. They come from CALM's state propagation (Schuster et al.
2022): the exit hidden state ``h_e`` is projected through each skipped layer's input norm and
key/value projections. In a batch whose rows exit at different layers, a row that has left keeps its
exit state as the input of the layers its neighbours still run, so those layers write the same
projections of ``h_e`` for it; once every row has left, the rest is projected alone
(``LlamaForCausalLM.propagate_state``: two projections per layer instead of attention + MLP, about a
third of a layer's weights). The semantics is "the skipped layers see the exit state", which
``tests/test_draft_strategies.py`` checks against a recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from layerskip.decoding.exit_criteria import ExitCriterion, LayerView
from layerskip.model.cache import KVCache
from layerskip.model.decoder import NO_SKIP, LlamaForCausalLM, SkipSet


@dataclass
class LayerWalk:
    """One walk of a batch's tokens: ``logits`` ``[batch, vocab]`` (float32) at each row's exit, the
    hidden states ``h_0..h_max`` (each ``[batch, 1, dim]``; a row that left keeps its exit state), each
    row's exit layer, and ``exact_below``: the first layer whose K/V or output is not the full model's for
    some row (a skipped sublayer or an exit)."""

    logits: torch.Tensor
    states: list[torch.Tensor]
    exit_layers: list[int]
    exact_below: int


def walk_layers(
    model: LlamaForCausalLM,
    ids: torch.Tensor,
    cache: KVCache,
    start: int | Sequence[int],
    max_layer: int,
    criteria: Sequence[ExitCriterion] | None = None,
    skip: SkipSet = NO_SKIP,
) -> LayerWalk:
    """Run tokens ``ids`` ``[batch, 1]`` at cache slots ``start`` through layers ``0..max_layer-1`` (minus
    ``skip``), row b leaving at the first layer ``criteria[b]`` accepts; the layers above an early exit
    get K/V by state propagation (module docstring)."""
    batch = ids.shape[0]
    hidden = model.embed(ids)
    states = [hidden]
    exact_below = max_layer
    exits = [max_layer] * batch
    walking = [criteria is not None] * batch
    views: list[LayerView | None] = [None] * batch
    for criterion in criteria or ():
        criterion.start_token(max_layer)
    inputs = model.slot_inputs(cache, start, 1, batch)  # one set of slots for every layer of the walk
    left = None  # [batch, 1, 1] True where a row has left
    last = max_layer
    for layer in range(max_layer):
        out = model.run_layers(hidden, layer, layer + 1, cache, start, skip=skip, inputs=inputs)
        hidden = out if left is None else torch.where(left, hidden, out)
        states.append(hidden)
        if (layer in skip.attn or layer in skip.mlp) and exact_below > layer:
            exact_below = layer
        if criteria is None or layer + 1 >= max_layer:
            continue
        for b in range(batch):
            if walking[b]:
                view = views[b] = LayerView(model, hidden[b : b + 1], layer + 1)
                if criteria[b].should_exit(view):
                    exits[b], walking[b] = layer + 1, False
        if not any(walking):
            last = layer + 1
            break
        if not all(walking):
            left = torch.tensor([not w for w in walking], device=hidden.device).view(batch, 1, 1)
    if last < max_layer:
        model.propagate_state(hidden, last, max_layer, cache, start)
    exact_below = min(exact_below, *exits)
    if criteria is None:
        logits = model.unembed(hidden)[:, -1].float()
    else:
        rows = []
        for b in range(batch):
            view = views[b]
            if view is None or view.layer != exits[b]:
                view = LayerView(model, hidden[b : b + 1], exits[b])
            criteria[b].observe_exit(view)
            rows.append(view.logits)
        logits = torch.stack(rows)
    return LayerWalk(logits, states, exits, exact_below)
