"""What a Gemma 3 text decoder's ``config.json`` says beyond a Llama's (``ModelConfig.gemma3``).

Read from a ``gemma3_text`` config, or from the ``text_config`` of a ``gemma3`` (multimodal) one. Both
transformers layouts are accepted: 5.x (``layer_types``, ``rope_parameters`` keyed by layer type) and
4.x (``sliding_window_pattern``, ``rope_theta`` for global layers, ``rope_local_base_freq`` for local
ones, ``rope_scaling`` for the global layers only). Keys a config omits take ``Gemma3TextConfig``'s
documented defaults (the multimodal checkpoints' text configs list only what differs from them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layerskip.errors import LayerskipError

SLIDING, FULL = "sliding_attention", "full_attention"
LAYER_TYPES = (FULL, SLIDING)  # a layer's kind is its index here (``Gemma3Settings.kinds``)
GEMMA3_MODEL_TYPES = ("gemma3_text", "gemma3")
ACTIVATION = "gelu_pytorch_tanh"

#: ``transformers.Gemma3TextConfig``'s defaults, for keys a config leaves out
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "sliding_window_pattern": 6, "max_position_embeddings": 131072,
    "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1,
}


@dataclass(frozen=True)
class Gemma3Settings:
    """Per layer ``layer_types`` (``sliding_attention``: local attention over the last
    ``ModelConfig.sliding_window`` positions, rotary base ``local_rope_theta``; ``full_attention``:
    global, rotary base and scaling of ``ModelConfig.rope_theta`` / ``rope_scaling``), the attention
    scale ``query_pre_attn_scalar ** -0.5`` and the final logits' soft cap (None: none)."""

    layer_types: tuple[str, ...]
    local_rope_theta: float = 10_000.0
    query_pre_attn_scalar: float = 256.0
    final_logit_softcapping: float | None = None

    @property
    def kinds(self) -> tuple[int, ...]:
        """Each layer's index into ``LAYER_TYPES`` (0 global, 1 local)."""
        return tuple(LAYER_TYPES.index(kind) for kind in self.layer_types)


def text_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``gemma3_text`` config of ``raw`` (itself, or a ``gemma3`` config's ``text_config``), with
    ``TEXT_DEFAULTS`` filled in."""
    if raw.get("model_type") == "gemma3":
        text = raw.get("text_config") or {}
        if not isinstance(text, dict) or text.get("model_type", "gemma3_text") != "gemma3_text":
            raise LayerskipError("unsupported gemma3 config: its text_config is not a gemma3_text decoder")
        inherited = {k: raw[k] for k in ("bos_token_id", "eos_token_id") if k in raw and k not in text}
        raw = {**text, **inherited, "model_type": "gemma3_text"}
    return {**TEXT_DEFAULTS, **raw}


def layer_types(raw: dict[str, Any], layers: int) -> tuple[str, ...]:
    """Each layer's attention kind, from ``layer_types`` or the ``sliding_window_pattern`` (every
    pattern-th layer global)."""
    kinds = raw.get("layer_types")
    if kinds is None:
        pattern = int(raw.get("sliding_window_pattern") or raw.get("_sliding_window_pattern") or 6)
        kinds = [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(layers)]
    if not isinstance(kinds, list) or len(kinds) != layers or any(k not in LAYER_TYPES for k in kinds):
        raise LayerskipError(f"invalid gemma3 config: layer_types must list {layers} of {', '.join(LAYER_TYPES)}")
    return tuple(kinds)


def rope_settings(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float]:
    """(global rotary base, global scaling or None, local rotary base)."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and FULL in params:
        full, local = dict(params[FULL]), dict(params.get(SLIDING) or {"rope_theta": raw["rope_local_base_freq"]})
        theta, local_theta = float(full.pop("rope_theta")), float(local.pop("rope_theta"))
        scaling = full if full.get("rope_type", full.get("type", "default")) != "default" else None
    else:
        theta, local_theta, local = float(raw["rope_theta"]), float(raw["rope_local_base_freq"]), {}
        scaling = raw.get("rope_scaling")
    if local.get("rope_type", "default") != "default":
        raise LayerskipError(f"unsupported rope scaling {local['rope_type']!r} of gemma3's local layers (only default)")
    return theta, None if scaling is None else dict(scaling), local_theta


def gemma3_settings(raw: dict[str, Any]) -> Gemma3Settings:
    """The Gemma 3 part of a filled-in text config (``text_config``); unsupported variants are one error."""
    activation = raw.get("hidden_activation") or raw.get("hidden_act") or ACTIVATION
    if activation != ACTIVATION:
        raise LayerskipError(f"unsupported hidden_activation {activation!r} for gemma3 (only {ACTIVATION})")
    if raw.get("attn_logit_softcapping") is not None:
        raise LayerskipError("unsupported attn_logit_softcapping for gemma3 (Gemma 3 checkpoints set none)")
    if raw.get("use_bidirectional_attention"):
        raise LayerskipError("unsupported use_bidirectional_attention for gemma3 (a causal decoder only)")
    cap = raw.get("final_logit_softcapping")
    return Gemma3Settings(
        layer_types=layer_types(raw, int(raw["num_hidden_layers"])),
        local_rope_theta=rope_settings(raw)[2],
        query_pre_attn_scalar=float(raw["query_pre_attn_scalar"]),
        final_logit_softcapping=None if cap is None else float(cap),
    )


def gemma3_hf_dict(settings: Gemma3Settings, rope_theta: float, rope_scaling: dict[str, Any] | None) -> dict[str, Any]:
    """The Gemma 3 keys of a transformers 5.x ``gemma3_text`` config."""
    full = {"rope_type": "default", **(rope_scaling or {}), "rope_theta": rope_theta}
    return {
        "layer_types": list(settings.layer_types),
        "rope_parameters": {FULL: full, SLIDING: {"rope_type": "default", "rope_theta": settings.local_rope_theta}},
        "query_pre_attn_scalar": int(scalar) if (scalar := settings.query_pre_attn_scalar).is_integer() else scalar,
        "final_logit_softcapping": settings.final_logit_softcapping,
        "attn_logit_softcapping": None,
        "hidden_activation": ACTIVATION,
    }
