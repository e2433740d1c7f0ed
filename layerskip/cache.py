"""The one KV cache shared by draft and verification, and the exit-layer hidden-state cache.

Slots are indexed by sequence position (gpt-fast style): a forward over ``T`` new tokens starting
at slot ``start`` writes every layer it runs at slots ``start..start+T-1`` and attends to slots
``< start+T``. Draft passes write layers below the exit layer, verification the rest, into the
same tensors, so verification never recomputes what the draft already produced (LayerSkip's
"KVQ cache", Elhoushi et al. 2024, section 4.2.2). Rolling back rejected drafts only moves
``length`` back: stale slots are overwritten before any later query can attend to them.
"""

from __future__ import annotations

import torch

from layerskip.config import ModelConfig


class KVCache:
    """Keys and values of all layers: ``k``, ``v`` are ``[layers, batch, kv_heads, capacity, head_dim]``.

    ``length`` is the number of committed (verified) slots; slots beyond it may hold stale draft
    entries, which the causal mask hides and the next forward overwrites.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        capacity: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, capacity, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ``[batch, kv_heads, T, head_dim]`` at slots ``start..start+T-1`` of ``layer``.

        Returns the keys and values of slots ``0..start+T-1``: ``[batch, kv_heads, start+T, head_dim]``.
        """
        end = start + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: slot {end - 1} >= capacity {self.capacity}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def commit(self, length: int) -> None:
        """Mark slots ``0..length-1`` as verified (moving the length back is the rollback)."""
        if not 0 <= length <= self.capacity:
            raise ValueError(f"cache length {length} outside 0..{self.capacity}")
        self.length = length


class ExitCache:
    """Hidden states at the draft's exit layer of drafted-but-unverified tokens.

    ``states`` is ``[batch, max_tokens, dim]``; ``count`` entries are valid. Verification feeds them
    straight into the layers above the exit instead of recomputing the layers below it.
    """

    def __init__(self, batch_size: int, max_tokens: int, dim: int, device: torch.device | str, dtype: torch.dtype) -> None:
        self.states = torch.zeros(batch_size, max_tokens, dim, device=device, dtype=dtype)
        self.count = 0

    def append(self, hidden: torch.Tensor) -> None:
        """hidden ``[batch, T, dim]``."""
        t = hidden.shape[1]
        self.states[:, self.count : self.count + t] = hidden
        self.count += t

    def valid(self) -> torch.Tensor:
        """``[batch, count, dim]``."""
        return self.states[:, : self.count]

    def clear(self) -> None:
        self.count = 0
