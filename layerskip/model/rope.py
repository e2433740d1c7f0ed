"""Rotary position embeddings (RoFormer) with the Llama 3 frequency scaling.

Positions are explicit: ``RotaryTable.cos_sin(positions)`` looks up precomputed angles for any
``[batch, seq]`` tensor of positions, so draft, verification and batched rows each at their own slots
all use the same table. The table grows on demand instead of covering ``max_position_embeddings``.
"""

from __future__ import annotations

import math

import torch

from layerskip.model.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """Per-pair inverse frequencies ``[head_dim // 2]`` in float32, scaled as the config asks."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = config.rope_scaling or {}
    rope_type = config.rope_type
    if rope_type == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif rope_type == "llama3":
        # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band between
        # the two cut-offs interpolated smoothly.
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq.to(torch.float32)


class RotaryTable:
    """cos/sin of ``position * inv_freq`` for positions ``0..capacity-1``: ``[capacity, head_dim]``."""

    def __init__(self, config: ModelConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.inv_freq = inverse_frequencies(config).to(device)
        self.dtype = dtype
        self.cos = torch.empty(0, config.head_dim, device=device, dtype=dtype)
        self.sin = torch.empty_like(self.cos)

    def _grow(self, capacity: int) -> None:
        capacity = max(capacity, 2 * self.cos.shape[0], 256)
        pos = torch.arange(capacity, device=self.inv_freq.device, dtype=torch.float32)
        angles = torch.outer(pos, self.inv_freq)
        self.cos = torch.cat([angles, angles], dim=-1).cos().to(self.dtype)
        # the sign of rotate_half folded into the table: rotate_half(x) * sin == x.roll(half) * sin_signed
        self.sin = torch.cat([-angles.sin(), angles.sin()], dim=-1).to(self.dtype)

    def cos_sin(self, positions: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        """positions ``[batch, seq]``, all below ``limit`` -> cos and sign-folded sin ``[batch, seq, 1,
        head_dim]`` (broadcast over the heads of ``[batch, seq, heads, head_dim]``).

        ``limit`` is known on the host, so growing the table never needs a device sync.
        """
        if limit > self.cos.shape[0]:
            self._grow(limit)
        return self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x ``[batch, seq, heads, head_dim]`` rotated by cos and sign-folded sin ``[batch, seq, 1,
    head_dim]`` (``RotaryTable.cos_sin``): Llama's ``x * cos + rotate_half(x) * sin``, bit for bit,
    in four ops instead of seven."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin
