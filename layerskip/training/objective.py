"""The training objective: a forward with per-sample layer dropout and the early-exit loss."""

from __future__ import annotations

import torch
from torch import nn

from layerskip.model import LlamaForCausalLM
from layerskip.training.early_exit_loss import exit_cross_entropy


def run_layer_with_dropout(model: LlamaForCausalLM, hidden: torch.Tensor, layer: int, keep: torch.Tensor | None) -> torch.Tensor:
    """Output of ``layer`` for the samples where ``keep`` ``[batch]`` is True; the rest pass through
    unchanged (a dropped layer is the identity on the residual stream). hidden ``[batch, T, dim]``."""
    if keep is None or bool(keep.all()):
        return model.run_layers(hidden, layer, layer + 1)
    index = keep.nonzero().squeeze(1)
    if index.numel() == 0:
        return hidden
    return hidden.index_copy(0, index, model.run_layers(hidden[index], layer, layer + 1))


class EarlyExitObjective(nn.Module):
    """``forward(inputs, targets, keep, weights)`` -> (loss, per-layer CE ``[layers]`` detached).

    ``keep`` ``[layers, batch]`` bool (layer dropout; None = no dropout); ``weights`` ``[layers]``
    the normalized early-exit weights ẽ(t, l) for the outputs ``h_{l+1}`` of each layer ``l``.
    Layers with weight 0 cost no unembedding. Wrapping this module (not the model) in
    DistributedDataParallel keeps the gradient hooks on the path that computes the loss.
    """

    def __init__(self, model: LlamaForCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor | None, weights: list[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        hidden = model.embed(inputs)
        total = hidden.new_zeros((), dtype=torch.float32)
        per_layer = torch.full((model.num_layers,), float("nan"))
        for layer in range(model.num_layers):
            hidden = run_layer_with_dropout(model, hidden, layer, None if keep is None else keep[layer])
            if weights[layer] > 0:
                ce = exit_cross_entropy(model.unembed, hidden, targets)
                total = total + weights[layer] * ce
                per_layer[layer] = ce.detach().float()
        return total, per_layer


@torch.no_grad()
def exit_losses(model: LlamaForCausalLM, inputs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Cross-entropy of ``unembed(h_{l+1})`` at every layer ``l`` (no dropout): ``[layers]``."""
    hidden = model.embed(inputs)
    out = []
    for layer in range(model.num_layers):
        hidden = model.run_layers(hidden, layer, layer + 1)
        out.append(float(exit_cross_entropy(model.unembed, hidden, targets)))
    return out
