"""Early-exit loss and its curricula (LayerSkip, Elhoushi et al. 2024, section 3.2).

``J = sum_l ẽ(t,l) * CE(unembed(h_{l+1}), y)`` over layers ``l = 0..L-1``, where ``h_{l+1}`` is
the output of layer ``l`` (``LlamaForCausalLM.run_layers`` convention), and
``ẽ(t,l) = C(t,l) e(l) / sum_i C(t,i) e(i)`` with

- ``e(l) = e_scale * sum_{i=0}^{l} i`` for ``l < L-1`` and
  ``e(L-1) = (L-1) + e_scale * sum_{i=0}^{L-2} i`` (scale ``sum_l``, the paper's);
  other shapes: ``l`` (``e_scale * l``, last ``L-1 + e_scale*(L-2)``), ``one`` (uniform);
- ``C(t,l)`` the curriculum: ``rotational`` (every R-th layer, the set rotating by one each step),
  ``gradual`` (from the last layer down to layer 0, one more layer every ``T/(2L)`` steps) or
  ``none`` (all layers). The last layer is always enabled.

Optional self-distillation (``distill`` = α > 0, an extension beyond the paper): the loss of an
early exit becomes ``(1-α)·CE + α·KL(p_L || p_l)``, with ``p_L`` the full model's distribution,
detached (the teacher is never pulled toward the exit). Greedy acceptance is the agreement of the
exit's argmax with the full model's, which this term trains directly (self-distilled early exits,
as in Bae et al. 2023, FREE; Liu et al. 2024, Kangaroo). The last layer keeps plain CE.

The per-layer cross-entropy is computed one layer at a time through the shared unembedding and
recomputed in the backward pass (activation checkpointing), so ``layers x batch x seq x vocab``
logits never exist at once.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

SCALE_SHAPES = ("sum_l", "l", "one")
CURRICULA = ("rotational", "gradual", "none")


def layer_scales(num_layers: int, e_scale: float, shape: str = "sum_l") -> list[float]:
    """``[e(0), ..., e(L-1)]`` before normalization."""
    L = num_layers
    if shape == "sum_l":
        scales = [e_scale * sum(range(l + 1)) for l in range(L - 1)]
        scales.append((L - 1) + e_scale * sum(range(L - 1)))
    elif shape == "l":
        scales = [e_scale * l for l in range(L - 1)]
        scales.append((L - 1) + e_scale * max(L - 2, 0))
    elif shape == "one":
        scales = [1.0] * L
    else:
        raise ValueError(f"unknown early-exit scale {shape!r} (use {', '.join(SCALE_SHAPES)})")
    if L == 1:
        scales = [1.0]
    return scales


def enabled_layers(num_layers: int, step: int, total_steps: int, curriculum: str = "rotational", rotation: int = 8) -> list[bool]:
    """``C(t, l)`` for every layer: which layers' early-exit losses count at this step."""
    L = num_layers
    if curriculum == "none":
        enabled = [True] * L
    elif curriculum == "rotational":
        if rotation < 1:
            raise ValueError("the rotational curriculum needs rotation >= 1")
        enabled = [(l - step) % rotation == 0 for l in range(L)]
    elif curriculum == "gradual":
        interval = max(total_steps / (2 * L), 1e-9)
        extra = int(step // interval)
        enabled = [l >= L - 1 - extra for l in range(L)]
    else:
        raise ValueError(f"unknown curriculum {curriculum!r} (use {', '.join(CURRICULA)})")
    enabled[-1] = True
    return enabled


def normalized_weights(scales: list[float], enabled: list[bool]) -> list[float]:
    """``ẽ(t, l)``: the enabled scales, normalized to sum to 1 (disabled layers get 0)."""
    active = [s if on else 0.0 for s, on in zip(scales, enabled)]
    total = sum(active)
    if total <= 0:
        raise ValueError("the early-exit loss has no enabled layer with a positive scale")
    return [a / total for a in active]


def logits_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean CE of logits ``[batch, T, vocab]`` (float32) against targets ``[batch, T]``."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=ignore_index)


def exit_loss(
    unembed: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    targets: torch.Tensor,
    teacher_logprobs: torch.Tensor | None = None,
    distill: float = 0.0,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, ce)`` of one exit: ``loss = (1-distill)·CE + distill·KL(teacher || exit)``.

    hidden ``[batch, T, dim]``, targets ``[batch, T]``, teacher_logprobs ``[batch, T, vocab]``
    (detached log-probabilities of the full model; None or ``distill == 0``: plain CE). Both are
    means over the positions whose target is not ``ignore_index``; logits are recomputed in
    backward instead of stored.
    """
    use_teacher = teacher_logprobs is not None and distill > 0

    def loss_fn(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = unembed(h).float()
        ce = logits_cross_entropy(logits, targets, ignore_index)
        if not use_teacher:
            return ce, ce
        valid = (targets != ignore_index).float()
        kl = F.kl_div(logits.log_softmax(-1), teacher_logprobs, reduction="none", log_target=True).sum(-1)
        kl = (kl * valid).sum() / valid.sum().clamp_min(1.0)
        return (1 - distill) * ce + distill * kl, ce

    if torch.is_grad_enabled() and hidden.requires_grad:
        return checkpoint(loss_fn, hidden, use_reentrant=False)
    return loss_fn(hidden)
