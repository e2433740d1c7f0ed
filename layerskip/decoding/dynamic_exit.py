"""Walking one token up the layers until an exit criterion stops it: the step shared by
autoregressive dynamic exit (``generate`` with a criterion) and the layer-wise drafter.

Later tokens attend to every earlier position at every layer, so a token that exits at layer e
must still leave K/V in layers e..max-1. ``walk_layers`` fills them by CALM's state propagation
(Schuster et al. 2022): the exit hidden state ``h_e`` is projected through each skipped layer's
input norm and key/value projections. The cost per skipped layer is two projections instead of
attention + MLP (about a third of a layer's weights); the semantics is "the skipped layers see the
exit state", which ``tests/test_draft_strategies.py`` checks against a recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from layerskip.model.cache import KVCache
from layerskip.decoding.exit_criteria import ExitCriterion, LayerView
from layerskip.model.decoder import NO_SKIP, LlamaForCausalLM, SkipSet


@dataclass
class LayerWalk:
    """One token's walk: ``logits`` ``[vocab]`` (float32) at its exit, the hidden states
    ``h_0..h_exit`` (each ``[1, 1, dim]``), the exit layer, and ``exact_below``: the first layer whose
    K/V or output is not the full model's (a skipped sublayer or the exit)."""

    logits: torch.Tensor
    states: list[torch.Tensor]
    exit_layer: int
    exact_below: int


def walk_layers(
    model: LlamaForCausalLM,
    ids: torch.Tensor,
    cache: KVCache,
    slot: int,
    max_layer: int,
    criterion: ExitCriterion | None = None,
    skip: SkipSet = NO_SKIP,
) -> LayerWalk:
    """Run token ``ids`` ``[1, 1]`` at cache slot ``slot`` through layers ``0..max_layer-1`` (minus
    ``skip``), leaving at the first layer ``criterion`` accepts; the layers above an early exit get
    K/V by state propagation."""
    hidden = model.embed(ids)
    states = [hidden]
    exact_below = exit_layer = max_layer
    view = None
    if criterion is not None:
        criterion.start_token(max_layer)
    inputs = model.slot_inputs(cache, slot, 1, 1)  # one slot for every layer of the walk
    for layer in range(max_layer):
        hidden = model.run_layers(hidden, layer, layer + 1, cache, slot, skip=skip, inputs=inputs)
        states.append(hidden)
        if (layer in skip.attn or layer in skip.mlp) and exact_below > layer:
            exact_below = layer
        if criterion is not None and layer + 1 < max_layer:
            view = LayerView(model, hidden, layer + 1)
            if criterion.should_exit(view):
                exit_layer = layer + 1
                break
    if exit_layer < max_layer:
        model.propagate_state(hidden, exit_layer, max_layer, cache, slot)
        exact_below = min(exact_below, exit_layer)
    if view is None or view.layer != exit_layer:
        view = LayerView(model, hidden, exit_layer)
    if criterion is not None:
        criterion.observe_exit(view)
    return LayerWalk(view.logits, states, exit_layer, exact_below)


def dynamic_exit_logits(
    model: LlamaForCausalLM, token: int, cache: KVCache, slot: int, criterion: ExitCriterion, max_layer: int
) -> tuple[torch.Tensor, int]:
    """Logits ``[vocab]`` (float32) of ``token`` at slot ``slot`` and the layer it exited at."""
    walk = walk_layers(model, torch.tensor([[token]], device=model.device), cache, slot, max_layer, criterion)
    return walk.logits, walk.exit_layer
