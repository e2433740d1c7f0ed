"""Layer dropout (LayerSkip, Elhoushi et al. 2024, section 3.1).

Layer ``l`` of ``L`` is skipped for a sample at step ``t`` of ``T`` with probability
``p_{l,t} = S(t) * D(l) * p_max``:

- ``D(l)`` (depth shape): ``exponential`` ``e^{l ln2/(L-1)} - 1`` (the paper's: 0 at the first
  layer, 1 at the last), ``linear`` ``l/(L-1)``, or ``uniform`` 1;
- ``S(t)`` (time shape): ``constant`` 1 (continual pretraining, finetuning) or ``exponential``
  ``e^{t ln2/(T-1)} - 1`` (from scratch: no dropout at the start, ``p_max`` at the end).

Skipping is per sample along the batch, and off in evaluation.
"""

from __future__ import annotations

import math

import torch

DEPTH_SHAPES = ("exponential", "linear", "uniform")
TIME_SHAPES = ("constant", "exponential")


def depth_shape(layer: int, num_layers: int, shape: str = "exponential") -> float:
    if shape not in DEPTH_SHAPES:
        raise ValueError(f"unknown layer dropout shape {shape!r} (use {', '.join(DEPTH_SHAPES)})")
    if shape == "uniform":
        return 1.0
    if num_layers == 1:
        return 0.0
    if shape == "linear":
        return layer / (num_layers - 1)
    return math.exp(layer * math.log(2) / (num_layers - 1)) - 1


def time_shape(step: int, total_steps: int, shape: str = "constant") -> float:
    if shape not in TIME_SHAPES:
        raise ValueError(f"unknown layer dropout time shape {shape!r} (use {', '.join(TIME_SHAPES)})")
    if shape == "constant" or total_steps <= 1:
        return 1.0
    return math.exp(min(step, total_steps - 1) * math.log(2) / (total_steps - 1)) - 1


def dropout_rates(
    num_layers: int,
    p_max: float,
    step: int = 0,
    total_steps: int = 1,
    depth: str = "exponential",
    time: str = "constant",
) -> list[float]:
    """``[p_{0,t}, ..., p_{L-1,t}]``."""
    if not 0 <= p_max <= 1:
        raise ValueError(f"p_max must be in [0, 1], got {p_max}")
    s = time_shape(step, total_steps, time)
    return [s * depth_shape(l, num_layers, depth) * p_max for l in range(num_layers)]


def sample_keep_mask(rates: list[float], batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample Bernoulli draws: ``[layers, batch]`` bool, True where the layer runs."""
    p = torch.tensor(rates, dtype=torch.float32).unsqueeze(1).expand(len(rates), batch_size)
    return torch.rand(p.shape, generator=generator) >= p
