"""The draft adapter's objective: match the frozen model's next-token distribution.

Kangaroo (Liu et al. 2024) trains its adapter with the cross-entropy against the full model's
distribution. Here the target is the full model's ``top_k`` distribution (renormalised; the tail
mass is dropped), and the student scores the draft vocabulary it will draft over (FR-Spec subset or
the full vocabulary), so training optimises exactly what drafting does. Target tokens outside the
draft vocabulary cannot be drafted: they are dropped from the target, and a position whose target
top-1 lies outside counts as a disagreement.
"""

from __future__ import annotations

import torch


def vocabulary_index(subset: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[vocab]`` int64: the position of each token id in ``subset`` ``[N]``, -1 when absent."""
    index = torch.full((vocab_size,), -1, dtype=torch.int64, device=subset.device)
    index[subset] = torch.arange(subset.numel(), device=subset.device)
    return index


def soft_target_loss(
    student_logits: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the student against the renormalised top-k target, and top-1 agreement.

    student_logits ``[..., N]`` over the draft vocabulary; top_ids / top_logp ``[..., k]`` (target top-k,
    most likely first); index ``[vocab]`` from ``vocabulary_index``. Returns the mean loss over
    positions with at least one target token in the draft vocabulary, and the fraction of all
    positions where the student's argmax is the target's top-1.
    """
    mapped = index[top_ids.long()]
    valid = mapped >= 0
    weights = torch.where(valid, top_logp.float(), torch.full_like(top_logp.float(), float("-inf")))
    has_target = valid.any(-1)
    target = torch.where(has_target[..., None], weights.softmax(-1), torch.zeros_like(weights))
    logq = student_logits.float().log_softmax(-1).gather(-1, mapped.clamp_min(0))
    per_position = -(target * torch.where(valid, logq, torch.zeros_like(logq))).sum(-1)
    loss = per_position[has_target].mean() if bool(has_target.any()) else student_logits.sum() * 0.0
    agreement = (student_logits.argmax(-1) == mapped[..., 0]).float().mean()
    return loss, agreement
