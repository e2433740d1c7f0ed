"""The training objective: a forward with per-sample layer dropout and the early-exit loss."""

from __future__ import annotations

import torch
from torch import nn

from layerskip.model.decoder import LlamaForCausalLM
from layerskip.training.early_exit_loss import exit_loss, logits_cross_entropy


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
    Layers with weight 0 cost no unembedding. ``distill`` > 0 adds self-distillation toward the
    last layer's (detached) distribution at the early exits (``early_exit_loss.exit_loss``).
    Wrapping this module (not the model) in DistributedDataParallel keeps the gradient hooks on
    the path that computes the loss.
    """

    def __init__(self, model: LlamaForCausalLM, distill: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.distill = distill

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor | None, weights: list[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model, last = self.model, self.model.num_layers - 1
        hidden = model.embed(inputs)
        exits: list[tuple[int, torch.Tensor]] = []
        for layer in range(model.num_layers):
            hidden = run_layer_with_dropout(model, hidden, layer, None if keep is None else keep[layer])
            if weights[layer] > 0:
                exits.append((layer, hidden))
        teacher = None
        if self.distill > 0 and any(layer < last for layer, _ in exits):
            with torch.no_grad():
                teacher = model.unembed(hidden.detach()).float().log_softmax(-1)
        total = hidden.new_zeros((), dtype=torch.float32)
        per_layer = torch.full((model.num_layers,), float("nan"))
        for layer, h in exits:
            loss, ce = exit_loss(model.unembed, h, targets, teacher if layer < last else None, self.distill)
            total = total + weights[layer] * loss
            per_layer[layer] = ce.detach().float()
        return total, per_layer


@torch.no_grad()
def exit_statistics(model: LlamaForCausalLM, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per layer ``l`` (no dropout): the cross-entropy of ``unembed(h_{l+1})`` and its top-1
    agreement with the last layer (the share of positions where both argmaxes are equal, the
    teacher-forced analogue of greedy draft acceptance). inputs, targets ``[batch, T]``."""
    hidden = model.embed(inputs)
    losses, predictions = [], []
    for layer in range(model.num_layers):
        hidden = model.run_layers(hidden, layer, layer + 1)
        logits = model.unembed(hidden).float()
        losses.append(float(logits_cross_entropy(logits, targets)))
        predictions.append(logits.argmax(-1))
    final = predictions[-1]
    return losses, [float((p == final).float().mean()) for p in predictions]


def mean_exit_statistics(
    model: LlamaForCausalLM, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[list[float], list[float]]:
    """``exit_statistics`` averaged over (inputs, targets) batches, moved to the model's device."""
    losses, agreement = [0.0] * model.num_layers, [0.0] * model.num_layers
    for inputs, targets in batches:
        batch_losses, batch_agreement = exit_statistics(model, inputs.to(model.device), targets.to(model.device))
        for i in range(model.num_layers):
            losses[i] += batch_losses[i] / len(batches)
            agreement[i] += batch_agreement[i] / len(batches)
    return losses, agreement
