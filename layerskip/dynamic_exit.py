"""Autoregressive decoding with a dynamic exit: each token leaves the model at the first layer
its criterion accepts (quality is traded for speed; there is no verification).

Later tokens attend to every earlier position at every layer, so a token that exits at layer e
must still leave K/V in layers e..max-1. This module fills them by CALM's state propagation
(Schuster et al. 2022): the exit hidden state ``h_e`` is projected through each skipped layer's
input norm and key/value projections. The cost per skipped layer is two projections instead of
attention + MLP (about a third of a layer's weights); the semantics is "the skipped layers see the
exit state", which ``tests/test_draft_strategies.py`` checks against a recomputation.
"""

from __future__ import annotations

import torch

from layerskip.cache import KVCache
from layerskip.exit_criteria import ExitCriterion, LayerView
from layerskip.model import LlamaForCausalLM


def dynamic_exit_logits(
    model: LlamaForCausalLM, token: int, cache: KVCache, slot: int, criterion: ExitCriterion, max_layer: int
) -> tuple[torch.Tensor, int]:
    """Logits ``[vocab]`` (float32) of ``token`` at slot ``slot`` and the layer it exited at."""
    hidden = model.embed(torch.tensor([[token]], device=model.device))
    criterion.start_token(max_layer)
    exit_layer, view = max_layer, None
    for layer in range(max_layer):
        hidden = model.run_layers(hidden, layer, layer + 1, cache, slot)
        if layer + 1 < max_layer:
            view = LayerView(model, hidden, layer + 1)
            if criterion.should_exit(view):
                exit_layer = layer + 1
                break
    if exit_layer < max_layer:
        model.propagate_state(hidden, exit_layer, max_layer, cache, slot)
    if view is None or view.layer != exit_layer:
        view = LayerView(model, hidden, exit_layer)
    criterion.observe_exit(view)
    return view.logits, exit_layer
