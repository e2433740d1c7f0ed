"""Model configuration of a Llama-family checkpoint, read from a Hugging Face ``config.json``.

Covers Llama 2 / CodeLlama (``rope_theta``), Llama 3 / 3.1 / 3.2 (GQA, ``llama3`` rope scaling,
tied embeddings) and the ``attention_bias`` / ``mlp_bias`` flags. Both the transformers 4.x layout
(``rope_theta`` + ``rope_scaling``) and the 5.x layout (``rope_parameters``) are accepted.

Mistral and Qwen2 are the same decoder (RMSNorm, rotary attention with GQA, SwiGLU MLP): Qwen2
adds a bias to the q/k/v projections (not to o_proj), Mistral may declare a ``sliding_window``.
Attention here is always full, which is exactly the checkpoint's attention for contexts up to the
window: longer contexts are refused (``context_limit``).

Gemma 3's text decoder (``gemma3_text``, or a ``gemma3`` config's text part) differs in every layer
(``layerskip.model.gemma3``); what its config says beyond these fields is ``ModelConfig.gemma3``
(``layerskip.model.gemma3_config``), and its ``sliding_window`` is the local layers' window, run exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layerskip.errors import LayerskipError, read_json_object
from layerskip.model.gemma3_config import GEMMA3_MODEL_TYPES, Gemma3Settings, gemma3_hf_dict, gemma3_settings, rope_settings, text_config
from layerskip.validation import check_model_config


def check_exit_layer(exit_layer: int, num_layers: int, what: str = "`exit_layer`", deepest: int | None = None) -> int:
    """``exit_layer`` as an exit of a ``num_layers``-layer model: in ``1..deepest`` (default ``num_layers - 1``:
    a draft exit below the top; ``num_layers`` admits the full depth), else one error naming ``what``."""
    top = num_layers - 1 if deepest is None else deepest
    if isinstance(exit_layer, bool) or not isinstance(exit_layer, int) or not 1 <= exit_layer <= top:
        raise LayerskipError(f"{what} {exit_layer} outside 1..{top} for this {num_layers}-layer model")
    return exit_layer

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", *GEMMA3_MODEL_TYPES)
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                    "gemma3_text": "Gemma3ForCausalLM"}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    model_type: str = "llama"
    qkv_bias: bool = False  # Qwen2: bias on q/k/v only (``attention_bias`` is on all four projections)
    sliding_window: int | None = None
    gemma3: Gemma3Settings | None = None  # a Gemma 3 text decoder (module docstring)

    @property
    def context_limit(self) -> int:
        """Positions this engine runs exactly: ``max_position_embeddings``, or a Mistral's sliding window
        if smaller (Gemma 3's local windows are run exactly)."""
        if self.sliding_window is None or self.gemma3 is not None:
            return self.max_position_embeddings
        return min(self.max_position_embeddings, self.sliding_window)

    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return str(self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default")))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise LayerskipError(
                f"unsupported architecture: model_type={model_type!r} "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        gemma = model_type in GEMMA3_MODEL_TYPES
        if gemma:
            raw, model_type = text_config(raw), "gemma3_text"
        check_model_config(raw, "config.json")
        if not gemma and raw.get("hidden_act", "silu") != "silu":
            raise LayerskipError(f"unsupported hidden_act {raw.get('hidden_act')!r} (only silu)")
        try:
            hidden = int(raw["hidden_size"])
            heads = int(raw["num_attention_heads"])
            if gemma:
                rope_theta, scaling, _ = rope_settings(raw)
            else:
                rope_params = dict(raw.get("rope_parameters") or {})
                rope_theta = float(rope_params.pop("rope_theta", raw.get("rope_theta", 10000.0)))
                scaling = raw.get("rope_scaling") or (rope_params if rope_params else None)
            if scaling is not None:
                scaling = dict(scaling)
                rope_type = scaling.get("rope_type", scaling.get("type", "default"))
                if rope_type not in SUPPORTED_ROPE_TYPES:
                    raise LayerskipError(
                        f"unsupported rope scaling {rope_type!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
                    )
                if rope_type == "default":
                    scaling = None
            window = raw.get("sliding_window") if model_type in ("mistral", "gemma3_text") or raw.get("use_sliding_window") else None
            eos = raw.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
            return cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
                rope_theta=rope_theta,
                rope_scaling=scaling,
                max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                attention_bias=bool(raw.get("attention_bias", False)),
                mlp_bias=bool(raw.get("mlp_bias", False)),
                bos_token_id=raw.get("bos_token_id"),
                eos_token_ids=tuple(int(e) for e in eos_ids),
                model_type=model_type,
                qkv_bias=model_type == "qwen2",
                sliding_window=None if window is None else int(window),
                gemma3=gemma3_settings(raw) if gemma else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LayerskipError(f"invalid model config: {exc!r}") from None

    @classmethod
    def from_file(cls, path: Path) -> "ModelConfig":
        raw = read_json_object(path, f"corrupt {path}", f"missing config.json in {Path(path).parent}")
        return cls.from_dict(raw)

    def to_hf_dict(self) -> dict[str, Any]:
        """The config in Hugging Face's layout for its ``model_type`` (loadable by transformers); a
        Llama config's dict is the same as before Mistral, Qwen2 and Gemma 3 were added (fingerprints stay)."""
        out = asdict(self)
        eos = out.pop("eos_token_ids")
        for key in ("model_type", "qkv_bias", "sliding_window", "gemma3"):
            out.pop(key)
        out["eos_token_id"] = (eos[0] if len(eos) == 1 else list(eos)) if eos else None
        out["rope_scaling"] = self.rope_scaling
        if self.gemma3 is not None:
            for key in ("rope_theta", "rope_scaling", "mlp_bias"):
                out.pop(key)
            out.update(gemma3_hf_dict(self.gemma3, self.rope_theta, self.rope_scaling), model_type=self.model_type,
                       architectures=[HF_ARCHITECTURES[self.model_type]], sliding_window=self.sliding_window)
            return out
        out.update(model_type=self.model_type, architectures=[HF_ARCHITECTURES[self.model_type]], hidden_act="silu")
        if self.model_type != "llama":
            out["sliding_window"] = self.sliding_window
            out["use_sliding_window"] = self.sliding_window is not None
        return out
