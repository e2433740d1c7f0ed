"""The one KV cache shared by draft and verification, and the exit-layer hidden-state cache.

Slots are indexed by sequence position (gpt-fast style): a forward over ``T`` new tokens starting
at slot ``start`` writes every layer it runs at slots ``start..start+T-1`` and attends, through a
mask, to slots ``< start+T`` of the whole preallocated buffer. Draft passes write layers below the exit layer, verification the rest, into the
same tensors, so verification never recomputes what the draft already produced (LayerSkip's
"KVQ cache", Elhoushi et al. 2024, section 4.2.2). Rolling back rejected drafts costs nothing: the
cache keeps no length of its own (the decoding loop knows each row's next slot), a rejected draft's
entries sit at slots the mask hides from every query before them, and the next forward from the
rolled-back slot overwrites them before any later query could see them.
"""

from __future__ import annotations

import torch

from layerskip.model.config import ModelConfig


class KVCache:
    """Static keys and values of all layers (gpt-fast style): ``keys[l]``, ``values[l]`` are
    ``[batch, kv_heads, capacity, head_dim]`` for layer ``l``, allocated once. One tensor per layer
    (gpt-fast's per-layer caches), not views of one buffer: a compiled step then writes each layer's
    buffer in place instead of copying one shared base (``layerskip.kernels.compiled``).

    A forward over ``T`` tokens writes them at slots ``start..start+T-1`` (one slot index tensor for
    every row) and attends to the whole buffer through a mask built from positions, so every call
    sees the same shapes. Rows may hold sequences of different lengths, left-padded: ``pad``
    ``[batch]`` (int64) is the number of padding slots of each row, and the token of row ``b`` at
    slot ``s`` has position ``s - pad[b]``. Slots beyond a row's verified tokens may hold stale draft entries, which the mask hides and the
    next forward overwrites (module docstring).
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        capacity: int,
        device: torch.device | str,
        dtype: torch.dtype,
        pad: torch.Tensor | None = None,
    ) -> None:
        shape = (batch_size, config.num_key_value_heads, capacity, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device) if pad is None else pad.to(device, torch.long)
        if self.pad.shape != (batch_size,):
            raise ValueError(f"pad must be [batch] = [{batch_size}], got {list(self.pad.shape)}")
        self._keys = torch.arange(capacity, device=device)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (*self.keys, *self.values))

    def slots(self, start: int, t: int) -> torch.Tensor:
        """Slot indices ``[T]`` of ``t`` tokens from ``start`` (checked against the capacity on the host)."""
        if start < 0 or start + t > self.capacity:
            raise ValueError(f"KV cache overflow: slots {start}..{start + t - 1} outside 0..{self.capacity - 1}")
        return self._keys[start : start + t]

    def positions(self, slots: torch.Tensor) -> torch.Tensor:
        """Rotary positions ``[batch, T]`` of the tokens at ``slots`` ``[T]``."""
        return (slots[None, :] - self.pad[:, None]).clamp_min(0)

    def mask(self, slots: torch.Tensor) -> torch.Tensor:
        """Boolean attention mask ``[batch, 1, T, capacity]``: the query at slot ``s`` of row ``b`` sees
        key slots ``pad[b]..s`` (causal, padding hidden). A padding query sees slots ``0..s``, so
        its (never used) output stays finite."""
        keys, queries = self._keys[None, None, None, :], slots[None, None, :, None]
        pad = self.pad[:, None, None, None]
        return (keys <= queries) & ((keys >= pad) | (queries < pad))

    def window(self, slots: torch.Tensor, size: int) -> torch.Tensor:
        """Boolean band ``[1, 1, T, capacity]``: the query at slot ``s`` sees key slots above ``s - size``
        (a sliding window of ``size`` positions, itself included; slots and positions differ by the
        row's padding alone). ``mask(slots) & window(slots, size)`` is a local attention layer's mask."""
        return self._keys[None, None, None, :] > slots[None, None, :, None] - size

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ``[batch, kv_heads, T, head_dim]`` at ``slots`` ``[T]`` of ``layer``; returns the
        whole buffers of that layer, ``[batch, kv_heads, capacity, head_dim]`` each."""
        keys, values = self.keys[layer], self.values[layer]
        keys.index_copy_(2, slots, k)
        values.index_copy_(2, slots, v)
        return keys, values


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
