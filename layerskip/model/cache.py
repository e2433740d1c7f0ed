"""The one KV cache shared by draft and verification, and the exit-layer hidden-state cache.

Slots are indexed by sequence position (gpt-fast style): a forward over ``T`` new tokens starting
at slot ``start`` (one for every row, or each row's own) writes every layer it runs at slots
``start..start+T-1`` and attends, through a mask, to slots ``< start+T`` of the whole preallocated buffer. Draft passes write layers below the exit layer, verification the rest, into the
same tensors, so verification never recomputes what the draft already produced (LayerSkip's
"KVQ cache", Elhoushi et al. 2024, section 4.2.2). Rolling back rejected drafts costs nothing: the
cache keeps no length of its own (the decoding loop knows each row's next slot), a rejected draft's
entries sit at slots the mask hides from every query before them, and the next forward from the
rolled-back slot overwrites them before any later query could see them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from layerskip.model.config import ModelConfig


class KVCache:
    """Static keys and values of all layers (gpt-fast style): ``keys[l]``, ``values[l]`` are
    ``[batch, kv_heads, capacity, head_dim]`` for layer ``l``, allocated once. One tensor per layer
    (gpt-fast's per-layer caches), not views of one buffer: a compiled step then writes each layer's
    buffer in place instead of copying one shared base (``layerskip.kernels.compiled``).

    Each row holds one sequence from slot 0, and a token's slot is its position. A forward over ``T``
    tokens starts at one slot for every row (``start`` an int: slot indices ``[T]``) or at a slot of
    each row's own (``start`` a list of ``batch`` ints: slot indices ``[batch, T]``; rows of different
    lengths, vLLM's per-row lengths), writes its tokens there and attends to the whole buffer through a
    causal mask, so every call sees the same shapes. A row may carry tokens past its real ones (a
    shorter draft than its neighbours', right padding): they land at slots after the row's last real
    token, which the mask hides from every real query before them and the next forward overwrites
    (module docstring).

    ``narrow(first, count)`` is a cache of rows ``first..first+count-1`` sharing these buffers (the
    decoding loop runs its active rows, the first ones, or one row alone); ``move_row`` copies a row.
    """

    def __init__(self, config: ModelConfig, batch_size: int, capacity: int, device: torch.device | str,
                 dtype: torch.dtype) -> None:
        shape = (batch_size, config.num_key_value_heads, capacity, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self._keys = torch.arange(capacity, device=device)
        #: the cache whose buffers these are (itself unless made by ``narrow``), and this one's first row there
        self.root: KVCache = self
        self.first_row = 0
        self._views: dict[tuple[int, int], KVCache] = {}

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

    def narrow(self, first: int, count: int) -> "KVCache":
        """Rows ``first..first+count-1`` as a cache over the same storage (the same object for the same
        rows, so what is keyed on a cache, compiled graphs included, stays put)."""
        root, first = self.root, self.first_row + first
        if first < 0 or count < 1 or first + count > root.batch_size:
            raise ValueError(f"rows {first}..{first + count - 1} outside the cache's 0..{root.batch_size - 1}")
        if first == 0 and count == root.batch_size:
            return root
        view = root._views.get((first, count))
        if view is None:
            view = object.__new__(KVCache)
            view.keys = [k[first : first + count] for k in root.keys]
            view.values = [v[first : first + count] for v in root.values]
            view._keys, view.root, view.first_row, view._views = root._keys, root, first, {}
            root._views[(first, count)] = view
        return view

    def move_row(self, source: int, target: int, length: int) -> None:
        """Copy slots ``0..length-1`` of row ``source`` into row ``target`` in every layer."""
        for buffer in (*self.keys, *self.values):
            buffer[target, :, :length] = buffer[source, :, :length]

    def slots(self, start: int | Sequence[int], t: int) -> torch.Tensor:
        """Slot indices of ``t`` tokens from ``start``: ``[T]`` for one start, ``[batch, T]`` for one per
        row (checked against the capacity on the host)."""
        shared = isinstance(start, int)
        low, high = (start, start) if shared else (min(start), max(start))
        if low < 0 or high + t > self.capacity:
            raise ValueError(f"KV cache overflow: slots {low}..{high + t - 1} outside 0..{self.capacity - 1}")
        if shared:
            return self._keys[start : start + t]
        if len(start) != self.batch_size:
            raise ValueError(f"one start slot per row: {self.batch_size} rows, {len(start)} starts")
        return torch.tensor(start, device=self.device)[:, None] + self._keys[None, :t]

    def positions(self, slots: torch.Tensor) -> torch.Tensor:
        """Rotary positions ``[batch, T]`` of the tokens at ``slots`` (``[T]`` or ``[batch, T]``)."""
        return slots.expand(self.batch_size, -1) if slots.dim() == 1 else slots

    def mask(self, slots: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """Boolean causal attention mask ``[batch, 1, T, width]`` over key slots ``0..width-1`` (default:
        the whole capacity): the query at slot ``s`` sees key slots ``0..s`` of its row. A mask narrower
        than the capacity makes attention read only those slots (``Attention.forward``)."""
        keys = self._keys[:width]
        return (keys[None, None, None, :] <= self._queries(slots)).expand(self.batch_size, -1, -1, -1)

    def window(self, slots: torch.Tensor, size: int, width: int | None = None) -> torch.Tensor:
        """Boolean band ``[batch or 1, 1, T, width]``: the query at slot ``s`` sees key slots above
        ``s - size`` (a sliding window of ``size`` positions, itself included). ``mask(slots, width) &
        window(slots, size, width)`` is a local attention layer's mask."""
        return self._keys[None, None, None, :width] > self._queries(slots) - size

    @staticmethod
    def _queries(slots: torch.Tensor) -> torch.Tensor:
        """slots ``[T]`` or ``[batch, T]`` -> ``[1 or batch, 1, T, 1]``."""
        return (slots[None] if slots.dim() == 1 else slots)[:, None, :, None]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v ``[batch, kv_heads, T, head_dim]`` at ``slots`` (``[T]`` or ``[batch, T]``) of ``layer``;
        returns the whole buffers of that layer, ``[batch, kv_heads, capacity, head_dim]`` each."""
        keys, values = self.keys[layer], self.values[layer]
        if slots.dim() == 1:
            keys.index_copy_(2, slots, k)
            values.index_copy_(2, slots, v)
        else:
            rows = torch.arange(keys.shape[0], device=slots.device)[:, None]
            keys[rows, :, slots] = k.transpose(1, 2).to(keys.dtype)
            values[rows, :, slots] = v.transpose(1, 2).to(values.dtype)
        return keys, values


class ExitCache:
    """Hidden states at the draft's exit layer of drafted-but-unverified tokens.

    ``states`` is ``[max_rows, max_tokens, dim]``; a round uses its first ``rows`` rows and ``count``
    entries of each. Verification feeds them straight into the layers above the exit instead of
    recomputing the layers below it.
    """

    def __init__(self, max_rows: int, max_tokens: int, dim: int, device: torch.device | str, dtype: torch.dtype) -> None:
        self.states = torch.zeros(max_rows, max_tokens, dim, device=device, dtype=dtype)
        self.rows = max_rows
        self.count = 0

    def append(self, hidden: torch.Tensor) -> None:
        """hidden ``[rows, T, dim]``."""
        t = hidden.shape[1]
        self.states[: self.rows, self.count : self.count + t] = hidden
        self.count += t

    def valid(self) -> torch.Tensor:
        """``[rows, count, dim]``."""
        return self.states[: self.rows, : self.count]

    def clear(self, rows: int) -> None:
        """Start a round of ``rows`` rows."""
        self.rows, self.count = rows, 0
