"""A compact Llama-family decoder with explicit exit and skip control.

One module tree named like Hugging Face's ``LlamaForCausalLM`` (so checkpoints load by name), and
a forward split in three calls that decoding strategies compose:

- ``embed(tokens)``: token ids ``[batch, T]`` -> hidden ``[batch, T, dim]``;
- ``run_layers(hidden, first, last, ...)``: decoder layers ``first..last-1`` at explicit cache slots;
- ``unembed(hidden)``: the shared final norm + LM head, applicable to the output of any layer.

Depth is chosen per call (``last``), never by mutating the config. ``h_l`` denotes the input of
layer ``l`` (the output of layer ``l-1``); ``h_0`` is the embedding and ``unembed(h_L)`` the full
model's logits, so an exit at layer ``E`` means ``unembed(h_E)`` after layers ``0..E-1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from layerskip.kernels.policy import NATIVE_ATTENTION_QUERIES, attention_dtype
from layerskip.model.cache import KVCache
from layerskip.model.config import ModelConfig
from layerskip.model.rope import RotaryTable, apply_rotary


@dataclass(frozen=True)
class SkipSet:
    """Sublayers to treat as identity on the residual stream (layer-skip drafts)."""

    attn: frozenset[int] = field(default_factory=frozenset)
    mlp: frozenset[int] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.attn or self.mlp)


NO_SKIP = SkipSet()

#: what a forward over T tokens at given cache slots needs (``LlamaForCausalLM.slot_inputs``): slot
#: indices ``[T]``, rotary cos/sin ``[batch, T, 1, head_dim]``, attention mask ``[batch, 1, T, capacity]``
#: (Gemma 3's cos, sin and mask are tuples of these, one per layer type: ``layerskip.model.gemma3``)
SlotInputs = tuple[torch.Tensor | None, Any, Any, Any]


def end_slot(start: int | Sequence[int], t: int) -> int:
    """One past the last slot of T tokens from ``start`` (one for all rows or one per row)."""
    return (start if isinstance(start, int) else max(start)) + t


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., dim]`` -> ``[..., dim]``, normalised in float32 (one fused op)."""
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.attention_bias or cfg.qkv_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=cfg.attention_bias)
        self.qkv_proj: nn.Module | None = None  # set by layerskip.kernels.linear.prepare_for_inference
        #: the attention logits' scale (Gemma 3: ``query_pre_attn_scalar ** -0.5``)
        self.scale = self.head_dim**-0.5
        # attend up to this many query tokens over a KV cache with torch.ops.layerskip.cached_attention
        # (layerskip.kernels.native; set by prepare_for_inference where it is built), more with PyTorch's SDPA
        self.native_queries = 0

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[batch, T, dim]`` -> qk ``[batch, T, (heads + kv_heads) * head_dim]`` (queries then keys,
        rotated together) and v ``[batch, T, kv_heads * head_dim]``."""
        if self.qkv_proj is not None:
            return self.qkv_proj(x)
        return torch.cat([self.q_proj(x), self.k_proj(x)], dim=-1), self.v_proj(x)

    def rotated_qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``[batch, T, dim]`` -> q ``[batch, heads, T, head_dim]``, k and v ``[batch, kv_heads, T,
        head_dim]``, rotated at cos/sin ``[batch, T, 1, head_dim]`` and in their dtype (the attention
        dtype, ``LlamaForCausalLM.attention_dtype``)."""
        b, t, _ = x.shape
        qk, v = self.project(x)
        qk = apply_rotary(qk.to(cos.dtype).view(b, t, self.n_heads + self.n_kv, self.head_dim), cos, sin)
        q = qk[:, :, : self.n_heads].transpose(1, 2)
        k = qk[:, :, self.n_heads :].transpose(1, 2)
        return q, k, v.to(cos.dtype).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer: int,
        cache: KVCache | None,
        slots: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """x ``[batch, T, dim]`` -> ``[batch, T, dim]``; K/V written to ``cache`` at ``slots`` ``[T]``,
        attention over its whole buffer under ``mask`` ``[batch, 1, T, capacity]`` (the layer type's: a
        local layer's hides what lies outside its window)."""
        b, t, _ = x.shape
        q, k, v = self.rotated_qkv(x, cos, sin)
        if cache is not None:
            k, v = cache.write(layer, slots, k, v)
            causal = False
        else:
            causal = mask is None and t > 1
        if cache is not None and t <= self.native_queries:
            out = torch.ops.layerskip.cached_attention(q.transpose(1, 2), k, v, mask, self.scale)
        else:
            if mask is not None and mask.shape[-1] < k.shape[2]:  # only the slots the mask covers (a prefill)
                k, v = k[:, :, : mask.shape[-1]], v[:, :, : mask.shape[-1]]
            gqa = self.n_heads != self.n_kv
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale,
                                                 enable_gqa=gqa).transpose(1, 2)
        return self.o_proj(out.reshape(b, t, self.n_heads * self.head_dim).to(x.dtype))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        bias = cfg.mlp_bias
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=bias)
        self.gate_up_proj: nn.Module | None = None  # set by layerskip.kernels.linear.prepare_for_inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm attention + SwiGLU MLP; ``intermediate_size == 0`` builds an attention-only block
    (the Kangaroo draft adapter's shape)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.intermediate_size > 0:
            self.mlp = MLP(cfg)
            self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # each sublayer (norm included) as one native call, used for the tokens native attention takes
        # (layerskip.kernels.blocks; set by prepare_for_inference where they apply)
        self.attn_block: Callable[..., torch.Tensor] | None = None
        self.mlp_block: Callable[[torch.Tensor], torch.Tensor] | None = None

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
        native = cache is not None and hidden.shape[1] <= self.self_attn.native_queries
        if not skip_attn:
            if native and self.attn_block is not None:
                hidden = self.attn_block(hidden, cos, sin, cache.keys[index], cache.values[index], slots, mask)
            else:
                hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, index, cache, slots, mask)
        if not skip_mlp and hasattr(self, "mlp"):
            if native and self.mlp_block is not None:
                hidden = self.mlp_block(hidden)
            else:
                hidden = hidden + self.mlp(self.post_attention_layernorm(hidden))
        return hidden


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: Callable[[ModelConfig], nn.Module] = DecoderLayer,
                 norm: Callable[[int, float], nn.Module] = RMSNorm) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = norm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Llama decoder with per-call exit layer and sublayer skipping. Another family (Gemma 3,
    ``layerskip.model.gemma3``) subclasses it with its own ``layer_class`` / ``norm_class`` and the
    calls that differ; the rest of the code sees the same API."""

    layer_class: Callable[[ModelConfig], nn.Module] = DecoderLayer
    norm_class: Callable[[int, float], nn.Module] = RMSNorm

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config, self.layer_class, self.norm_class)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rotary: RotaryTable | None = None
        #: the compiled ``layer_loop`` decoding calls go through (``layerskip.kernels.compiled``); None: eager
        self.compiled_layers: Callable[..., torch.Tensor] | None = None
        #: the checkpoint directory it was loaded from (files stored beside it: draft vocabulary)
        self.source_path: Path | None = None

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def attention_dtype(self) -> torch.dtype:
        """The dtype of rotary embedding, attention and the KV cache (``layerskip.kernels.policy.attention_dtype``)."""
        return attention_dtype(self.device, self.dtype)

    def rotary(self) -> RotaryTable:
        table = self._rotary
        if table is None or table.dtype != self.attention_dtype or table.inv_freq.device != self.device:
            table = self._rotary = RotaryTable(self.config, self.device, self.attention_dtype)
        return table

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[batch, T]`` -> ``h_0`` ``[batch, T, dim]``."""
        return self.model.embed_tokens(tokens)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """The shared exit head: ``lm_head(norm(h))``, hidden ``[batch, T, dim]`` -> logits ``[batch, T, vocab]``."""
        return self.lm_head(self.model.norm(hidden))

    def run_layers(
        self,
        hidden: torch.Tensor,
        first: int,
        last: int,
        cache: KVCache | None = None,
        start: int | Sequence[int] = 0,
        skip: SkipSet = NO_SKIP,
        inputs: SlotInputs | None = None,
    ) -> torch.Tensor:
        """Run decoder layers ``first..last-1`` on ``hidden`` = ``h_first`` ``[batch, T, dim]``.

        The T tokens sit at cache slots (= rotary positions) ``start..start+T-1`` of every row, or from
        each row's own ``start[b]`` (``layerskip.model.cache.KVCache.slots``). Without a cache the call is a plain causal forward
        over the T tokens (training). ``inputs``: ``slot_inputs(cache, start, T, batch)`` already
        computed (a caller running one layer at a time). Returns ``h_last`` ``[batch, T, dim]``.
        """
        if not 0 <= first <= last <= self.num_layers:
            raise ValueError(f"layer range {first}..{last} outside 0..{self.num_layers}")
        slots, cos, sin, mask = inputs or self.slot_inputs(cache, start, hidden.shape[1], hidden.shape[0])
        if self.compiled_layers is not None and cache is not None and not skip:
            return self.compiled_layers(hidden, first, last, cache, slots, cos, sin, mask)
        return self.layer_loop(hidden, first, last, cache, slots, cos, sin, mask, skip)

    def layer_loop(
        self,
        hidden: torch.Tensor,
        first: int,
        last: int,
        cache: KVCache | None,
        slots: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        skip: SkipSet = NO_SKIP,
    ) -> torch.Tensor:
        """Layers ``first..last-1`` on ``h_first`` ``[batch, T, dim]`` given ``slot_inputs`` -> ``h_last``
        (the body of ``run_layers``, and what ``layerskip.kernels.compiled`` compiles)."""
        layers = self.model.layers
        for i in range(first, last):
            hidden = layers[i](hidden, cos, sin, i, cache, slots, mask, i in skip.attn, i in skip.mlp)
        return hidden

    def attention_width(self, cache: KVCache, start: int | Sequence[int], t: int) -> int:
        """Key slots a forward over T tokens from ``start`` attends over. The whole capacity where the native
        kernel attends (it skips hidden slots itself) and for a compiled graph's few-token calls (static
        shapes: one graph for every decode step); otherwise only up to the last slot written, so a prefill
        into a long cache (a server's) does not attend over empty slots."""
        few = t <= NATIVE_ATTENTION_QUERIES
        if t <= self.model.layers[0].self_attn.native_queries or (few and self.compiled_layers is not None):
            return cache.capacity
        return end_slot(start, t)

    def slot_inputs(self, cache: KVCache | None, start: int | Sequence[int], t: int, batch: int) -> SlotInputs:
        """What a forward over T tokens from slot ``start`` (one for all rows or one per row) needs: slot
        indices ``[T]`` or ``[batch, T]``, rotary cos/sin ``[batch, T, 1, head_dim]`` at each row's positions ``[batch, T]``, and the attention mask
        ``[batch, 1, T, width]`` (``attention_width``; ``layerskip.model.cache.KVCache.mask``, made additive — 0 or -inf in
        the attention dtype — once here rather than by every layer's attention). Without a cache:
        positions ``start..`` in every row, no slots and no mask (causal attention over the T tokens)."""
        if cache is None:
            slots = mask = None
            assert isinstance(start, int), "a forward without a cache starts every row at one position"
            positions = torch.arange(start, start + t, device=self.device).expand(batch, t)
        else:
            slots = cache.slots(start, t)
            positions, visible = cache.positions(slots), cache.mask(slots, self.attention_width(cache, start, t))
            mask = torch.zeros(visible.shape, dtype=cache.dtype, device=visible.device).masked_fill_(~visible, float("-inf"))
        cos, sin = self.rotary().cos_sin(positions, end_slot(start, t))
        return slots, cos, sin, mask

    def propagate_state(self, hidden: torch.Tensor, first: int, last: int, cache: KVCache,
                        start: int | Sequence[int]) -> None:
        """Fill the K/V of layers ``first..last-1`` at slots ``start..`` from one hidden state
        ``h_first`` ``[batch, T, dim]`` (CALM's state propagation, Schuster et al. 2022): each skipped
        layer gets keys/values projected from the exit state, so later tokens find valid entries.
        Costs two projections per layer instead of a full layer."""
        b, t, _ = hidden.shape
        slots, cos, sin, _ = self.slot_inputs(cache, start, t, b)
        for i in range(first, last):
            layer = self.model.layers[i]
            _, k, v = layer.self_attn.rotated_qkv(layer.input_layernorm(hidden), cos, sin)
            cache.write(i, slots, k, v)

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None = None,
        start: int = 0,
        exit_layer: int | None = None,
    ) -> torch.Tensor:
        """tokens ``[batch, T]`` -> logits ``[batch, T, vocab]`` of ``unembed(h_exit)`` (full depth by default)."""
        last = self.num_layers if exit_layer is None else exit_layer
        return self.unembed(self.run_layers(self.embed(tokens), 0, last, cache, start))
