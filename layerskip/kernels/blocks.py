"""Decoder sublayers as one native call each, for decoding with bf16 weights on a CPU.

An eager decoding step of one ``layerskip.model.decoder.DecoderLayer`` is ~30 ATen ops and ~10 module calls,
whose dispatch costs as much as a third of a step of a 135M model (BENCHMARKS.md, "Native CPU
kernels"). A prepared layer whose projections all stream bf16 weights
(``layerskip.kernels.linear.StreamedLinear``) gets two callables over ``layerskip/kernels/csrc/decoder_block.cpp``
instead (``layerskip.kernels.linear.attach_blocks``):

- ``AttentionBlock``: ``h + o_proj(attention(rope(qkv_proj(rms_norm(h)))))``, the new keys and values
  written into the layer's cache buffers at the step's slots;
- ``MLPBlock``: ``h + down_proj(silu(gate) * up)`` with ``gate, up = gate_up_proj(rms_norm(h))``.

Both compute what the module path does, with its roundings (the op's source says which), over the same
kernels, so they agree with it to bf16 rounding (not bit for bit: the norm's reduction order
differs) and, like it, give every row the same values whatever the number of tokens. The layer uses
them eagerly for up to ``Attention.native_queries`` tokens over a KV cache; training, prefill of long
prompts and ``torch.compile`` keep the module path.
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionBlock:
    """The attention sublayer of one layer (norm included) as ``torch.ops.layerskip.attention_block``."""

    def __init__(self, norm: nn.Module, attn: nn.Module) -> None:
        qkv, o = attn.qkv_proj.inner, attn.o_proj
        self.norm_weight, self.eps = norm.weight, norm.eps
        self.qkv, self.qkv_bias, self.o, self.o_bias = qkv.packed, qkv.bias, o.packed, o.bias
        self.n_heads, self.scale = attn.n_heads, attn.scale

    def __call__(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden ``[batch, T, dim]`` bf16 at slots ``[T]``, cos/sin ``[batch, T, 1, head_dim]``, the layer's
        cache buffers keys/values ``[batch, kv_heads, capacity, head_dim]`` and the additive mask ``[batch,
        1, T, capacity]`` (float32) -> the sublayer's output ``[batch, T, dim]``."""
        return torch.ops.layerskip.attention_block(hidden, self.norm_weight, self.eps, self.qkv, self.qkv_bias, self.o,
                                                   self.o_bias, cos, sin, keys, values, slots, mask, self.n_heads,
                                                   self.scale)


class MLPBlock:
    """The MLP sublayer of one layer (norm included) as ``torch.ops.layerskip.mlp_block``."""

    def __init__(self, norm: nn.Module, mlp: nn.Module) -> None:
        gate_up, down = mlp.gate_up_proj.inner, mlp.down_proj
        self.norm_weight, self.eps = norm.weight, norm.eps
        self.gate_up, self.gate_up_bias, self.down, self.down_bias = gate_up.packed, gate_up.bias, down.packed, down.bias
        self.intermediate = mlp.gate_up_proj.sizes[0]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden ``[batch, T, dim]`` bf16 -> the sublayer's output ``[batch, T, dim]``."""
        return torch.ops.layerskip.mlp_block(hidden, self.norm_weight, self.eps, self.gate_up, self.gate_up_bias,
                                             self.down, self.down_bias, self.intermediate)
