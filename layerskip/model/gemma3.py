"""Gemma 3's text decoder (``gemma3_text``) on the Llama decoder's API (``layerskip.model.decoder``).

What differs from Llama, each piece small and used only here (so the Llama path is unchanged):

- every RMSNorm scales by ``1 + weight`` and runs in float32 (``GemmaRMSNorm``); a layer has four
  (before and after attention, before and after the MLP: ``Gemma3DecoderLayer``);
- q and k are RMS-normalised per head before rotary, and attention is scaled by
  ``query_pre_attn_scalar ** -0.5`` (``Gemma3Attention``);
- the MLP is GELU (tanh approximation) gated (``Gemma3MLP``);
- layers alternate local attention (a sliding window of ``sliding_window`` positions, rotary base
  ``local_rope_theta``) and global attention (full, rotary base and scaling of ``rope_theta``), per
  ``Gemma3Settings.layer_types``: ``slot_inputs`` builds cos/sin and the mask once per layer *type*
  per forward, and ``layer_loop`` hands each layer its type's;
- the embeddings are multiplied by ``sqrt(hidden_size)`` rounded to the model dtype (as transformers
  does), the LM head is tied, and the logits are soft-capped where the config asks.

Early exit at any layer goes through the same final norm and head (``unembed``). Kernels: the
projections are fused and prepared like Llama's (the same ``q_proj``/.../``down_proj`` names), attention
of a few tokens over the cache runs the native kernel (head size 256 included), each norm on bf16
activations is one native call (``attach_native_norms``); the native one-call sublayers are never
attached (``layerskip.kernels.policy.decoder_blocks``);
``torch.compile`` is refused (``layerskip.kernels.policy.compile_problem``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from layerskip.model.cache import KVCache
from layerskip.model.config import ModelConfig
from layerskip.model.decoder import NO_SKIP, MLP, Attention, LlamaForCausalLM, SkipSet, SlotInputs, end_slot
from layerskip.model.rope import RotaryTable, apply_rotary


class GemmaRMSNorm(nn.Module):
    """``x / rms(x) * (1 + weight)`` in float32, returned in x's dtype; x ``[..., dim]``. Prepared for
    inference on the native kernels (``attach_native_norms``), a bfloat16 x takes one native call."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        #: ``1 + weight`` ``[1, dim]`` float32 for ``torch.ops.layerskip.gemma_rms_norm`` (None: the ATen path)
        self.native_scale: torch.Tensor | None = None

    def scale(self) -> torch.Tensor:
        """``1 + weight`` ``[dim]`` in float32."""
        return self.weight.float() + 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native_scale is not None and x.dtype == torch.bfloat16:
            return torch.ops.layerskip.gemma_rms_norm(x.contiguous(), self.native_scale, self.eps)
        return F.rms_norm(x.float(), self.weight.shape, self.scale(), self.eps).to(x.dtype)


class Gemma3Attention(Attention):
    """Llama's attention with per-head q/k norms before rotary and the ``query_pre_attn_scalar`` scale."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        assert cfg.gemma3 is not None
        self.q_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.scale = cfg.gemma3.query_pre_attn_scalar**-0.5
        #: the q and k norms' ``1 + weight`` per head ``[heads + kv_heads, head_dim]`` float32: both norms in
        #: one native call (``attach_native_norms``; None: each its own module)
        self.qk_scale: torch.Tensor | None = None

    def rotated_qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[batch, T, dim]`` -> q ``[batch, heads, T, head_dim]``, k and v ``[batch, kv_heads, T,
        head_dim]`` in the attention dtype; q and k normalised per head, then rotated at cos/sin
        ``[batch, T, 1, head_dim]``."""
        b, t, _ = x.shape
        qk, v = self.project(x)
        qk = qk.view(b, t, self.n_heads + self.n_kv, self.head_dim)
        if self.qk_scale is not None and qk.dtype == torch.bfloat16:
            qk = torch.ops.layerskip.gemma_rms_norm(qk.contiguous(), self.qk_scale, self.q_norm.eps)
            q, k = qk[:, :, : self.n_heads], qk[:, :, self.n_heads :]
        else:
            q, k = self.q_norm(qk[:, :, : self.n_heads]), self.k_norm(qk[:, :, self.n_heads :])
        q = apply_rotary(q.to(cos.dtype), cos, sin).transpose(1, 2)
        k = apply_rotary(k.to(cos.dtype), cos, sin).transpose(1, 2)
        return q, k, v.to(cos.dtype).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)


def attach_native_norms(module: nn.Module) -> None:
    """Give every Gemma norm under ``module`` its float32 ``1 + weight`` for the native one-call norm
    (``torch.ops.layerskip.gemma_rms_norm``; in place, inference only: the weights must not change after).
    The caller decides that the native kernels apply (``layerskip.kernels.policy.native_norms``)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, GemmaRMSNorm):
                sub.native_scale = sub.scale().reshape(1, -1).contiguous()
            elif isinstance(sub, Gemma3Attention):
                q, k = sub.q_norm.scale(), sub.k_norm.scale()
                sub.qk_scale = torch.cat([q.expand(sub.n_heads, -1), k.expand(sub.n_kv, -1)]).contiguous()


class Gemma3MLP(MLP):
    """``down(gelu_tanh(gate(x)) * up(x))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class Gemma3DecoderLayer(nn.Module):
    """``h + post_attn(attn(input(h)))``, then ``h + post_ffw(mlp(pre_ffw(h)))``: four (1 + w) norms;
    ``intermediate_size == 0`` builds the attention half alone (an attention-only draft adapter)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = Gemma3Attention(cfg)
        self.input_layernorm = GemmaRMSNorm(dim, eps)
        self.post_attention_layernorm = GemmaRMSNorm(dim, eps)
        if cfg.intermediate_size > 0:
            self.mlp = Gemma3MLP(cfg)
            self.pre_feedforward_layernorm = GemmaRMSNorm(dim, eps)
            self.post_feedforward_layernorm = GemmaRMSNorm(dim, eps)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        index: int,
        cache: KVCache | None,
        slots: torch.Tensor | None,
        mask: torch.Tensor | None,
        skip_attn: bool = False,
        skip_mlp: bool = False,
    ) -> torch.Tensor:
        """hidden ``[batch, T, dim]`` -> ``[batch, T, dim]``; K/V go to layer ``index`` of ``cache``."""
        if not skip_attn:
            attended = self.self_attn(self.input_layernorm(hidden), cos, sin, index, cache, slots, mask)
            hidden = hidden + self.post_attention_layernorm(attended)
        if not skip_mlp and hasattr(self, "mlp"):
            hidden = hidden + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden)))
        return hidden


class Gemma3ForCausalLM(LlamaForCausalLM):
    """Gemma 3's text decoder with per-call exit layer and sublayer skipping (module docstring)."""

    layer_class = Gemma3DecoderLayer
    norm_class = GemmaRMSNorm

    def __init__(self, config: ModelConfig) -> None:
        if config.gemma3 is None:
            raise ValueError("Gemma3ForCausalLM needs a gemma3_text config")
        super().__init__(config)
        self.settings = config.gemma3
        self.kinds = config.gemma3.kinds  # per layer: 0 global, 1 local (LAYER_TYPES)
        self._local_rotary: RotaryTable | None = None
        self._embed_scale: dict[torch.dtype, float] = {}

    def local_rotary(self) -> RotaryTable:
        """The local layers' rotary table (base ``local_rope_theta``, unscaled); ``rotary()`` is the global one."""
        table = self._local_rotary
        if table is None or table.dtype != self.attention_dtype or table.inv_freq.device != self.device:
            local = replace(self.config, rope_theta=self.settings.local_rope_theta, rope_scaling=None)
            table = self._local_rotary = RotaryTable(local, self.device, self.attention_dtype)
        return table

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[batch, T]`` -> ``h_0 = embedding * sqrt(hidden_size)`` ``[batch, T, dim]``, the factor
        rounded to the model dtype first (transformers' rounding)."""
        scale = self._embed_scale.get(self.dtype)
        if scale is None:
            scale = self._embed_scale[self.dtype] = torch.tensor(math.sqrt(self.config.hidden_size), dtype=self.dtype).item()
        return self.model.embed_tokens(tokens) * scale

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """``lm_head(norm(h))``, soft-capped (``cap * tanh(logits / cap)``) where the config asks;
        hidden ``[batch, T, dim]`` -> logits ``[batch, T, vocab]``."""
        logits = self.lm_head(self.model.norm(hidden))
        cap = self.settings.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def layer_loop(
        self,
        hidden: torch.Tensor,
        first: int,
        last: int,
        cache: KVCache | None,
        slots: torch.Tensor | None,
        cos: tuple[torch.Tensor, torch.Tensor],
        sin: tuple[torch.Tensor, torch.Tensor],
        mask: tuple[torch.Tensor | None, torch.Tensor | None],
        skip: SkipSet = NO_SKIP,
    ) -> torch.Tensor:
        """Layers ``first..last-1`` on ``h_first`` ``[batch, T, dim]``, each given its type's cos, sin and
        mask (``slot_inputs``) -> ``h_last``."""
        layers, kinds = self.model.layers, self.kinds
        for i in range(first, last):
            kind = kinds[i]
            hidden = layers[i](hidden, cos[kind], sin[kind], i, cache, slots, mask[kind], i in skip.attn, i in skip.mlp)
        return hidden

    def slot_inputs(self, cache: KVCache | None, start: int | Sequence[int], t: int, batch: int) -> SlotInputs:
        """Slot indices (``[T]``, or ``[batch, T]`` for a start per row) and, per layer type (global, local), rotary cos/sin ``[batch, T, 1,
        head_dim]`` and the additive mask ``[batch, 1, T, width]`` (``attention_width``; local: ``KVCache.window`` on top
        of the causal mask). Without a cache: positions ``start..``, the global layers causal (no mask)
        and the local ones masked only when the T tokens outnumber the window."""
        window = self.config.sliding_window or t
        if cache is None:
            slots = None
            assert isinstance(start, int), "a forward without a cache starts every row at one position"
            positions = torch.arange(start, start + t, device=self.device).expand(batch, t)
            keys = torch.arange(t, device=self.device)
            band = (keys[None, :] <= keys[:, None]) & (keys[None, :] > keys[:, None] - window)
            masks = (None, band[None, None] if t > window else None)
        else:
            slots = cache.slots(start, t)
            width = self.attention_width(cache, start, t)
            positions, visible = cache.positions(slots), cache.mask(slots, width)
            zeros = torch.zeros(visible.shape, dtype=cache.dtype, device=visible.device)
            local = visible & cache.window(slots, window, width)
            masks = (zeros.masked_fill(~visible, float("-inf")), zeros.masked_fill_(~local, float("-inf")))
        limit = end_slot(start, t)
        (cos, sin), (local_cos, local_sin) = self.rotary().cos_sin(positions, limit), self.local_rotary().cos_sin(positions, limit)
        return slots, (cos, local_cos), (sin, local_sin), masks

    def propagate_state(self, hidden: torch.Tensor, first: int, last: int, cache: KVCache,
                        start: int | Sequence[int]) -> None:
        """CALM's state propagation (``LlamaForCausalLM.propagate_state``) with each layer's q/k norms and
        its type's rotary table."""
        b, t, _ = hidden.shape
        slots, cos, sin, _ = self.slot_inputs(cache, start, t, b)
        for i in range(first, last):
            layer, kind = self.model.layers[i], self.kinds[i]
            _, k, v = layer.self_attn.rotated_qkv(layer.input_layernorm(hidden), cos[kind], sin[kind])
            cache.write(i, slots, k, v)


def causal_lm(config: ModelConfig) -> LlamaForCausalLM:
    """The decoder class of ``config``'s family, built (on the current default device)."""
    return Gemma3ForCausalLM(config) if config.gemma3 is not None else LlamaForCausalLM(config)
