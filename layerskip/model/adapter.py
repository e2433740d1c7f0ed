"""Draft adapters: a small trained block between a frozen model's exit layer and its own head.

Kangaroo (Liu et al. 2024, arXiv:2404.18911): the draft of a frozen model is its first ``E`` layers,
then a lightweight adapter (an attention block with its norms), then the model's own final norm
and LM head. Only the adapter is trained, so the model — and the verified output — stay exactly
the original checkpoint's. Verification still reuses the draft's K/V and exit hidden states of the
layers below ``E``: those are the full model's own; the adapter's output is used only for drafting.

An adapter is one decoder layer of the base's family with the base's widths (``DecoderLayer`` for
Llama, ``Gemma3DecoderLayer`` for Gemma 3): ``attention`` is Kangaroo's attention-only block,
``decoder_layer`` adds the family's MLP (SwiGLU, or Gemma's gated GELU) of ``intermediate_size``. It
attends over its own one-layer KV cache at the same slots and rotary positions as the model; on Gemma 3
it is a global layer (full attention, the global rotary base), so it sees the whole draft context.

On disk: ``adapter.safetensors`` + ``adapter.json`` (exit layer, architecture, sizes, and the
fingerprint of the base checkpoint it was trained for; loading it onto another base is an error).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layerskip.model.cache import KVCache
from layerskip.model.config import ModelConfig, check_exit_layer
from layerskip.errors import LayerskipError, read_json_object
from layerskip.model.fingerprint import base_fingerprint
from layerskip.model.decoder import DecoderLayer, LlamaForCausalLM
from layerskip.model.gemma3 import Gemma3DecoderLayer

ADAPTER_CONFIG = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
ARCHITECTURES = ("attention", "decoder_layer")


@dataclass(frozen=True)
class AdapterConfig:
    """What an adapter is and which base it belongs to (``adapter.json``)."""

    exit_layer: int
    architecture: str = "attention"
    intermediate_size: int = 0
    base_fingerprint: str = ""
    base_name: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise LayerskipError(f"adapter architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if (self.architecture == "attention") != (self.intermediate_size == 0):
            raise LayerskipError("an 'attention' adapter has intermediate_size 0; a 'decoder_layer' adapter needs one > 0")

    def block_config(self, base: ModelConfig) -> ModelConfig:
        """The one-layer config of the adapter block: the base's widths, heads and rotary settings."""
        return replace(base, num_hidden_layers=1, intermediate_size=self.intermediate_size)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str) -> "AdapterConfig":
        types = {"exit_layer": int, "architecture": str, "intermediate_size": int, "base_fingerprint": str, "base_name": str}
        values = {}
        for key, kind in types.items():
            if key not in raw:
                if key == "exit_layer":
                    raise LayerskipError(f"{source}: missing 'exit_layer'")
                continue
            value = raw[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise LayerskipError(f"{source}: '{key}' must be {kind.__name__}, got {value!r}")
            values[key] = value
        return cls(**values)


class DraftAdapter(nn.Module):
    """``h_E`` ``[batch, T, dim]`` -> adapted hidden ``[batch, T, dim]`` for the model's shared head."""

    def __init__(self, base: ModelConfig, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.block_config = config.block_config(base)
        self.block = Gemma3DecoderLayer(self.block_config) if base.gemma3 is not None else DecoderLayer(self.block_config)
        #: which of a Gemma 3 model's per-layer-type slot inputs the block takes (LAYER_TYPES: 0 global)
        self.kind: int | None = 0 if base.gemma3 is not None else None

    def new_cache(self, model_cache: KVCache) -> KVCache:
        """The adapter's one-layer cache, with the rows and slots of the model's."""
        return KVCache(self.block_config, model_cache.batch_size, model_cache.capacity, model_cache.device,
                       model_cache.dtype)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        slots: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``LlamaForCausalLM.slot_inputs`` gives cos/sin, slots and mask (Gemma 3's: one per layer type,
        of which the block takes the global one); without a cache, a causal forward over the T tokens
        (training)."""
        if self.kind is not None:
            cos, sin, mask = cos[self.kind], sin[self.kind], mask[self.kind] if mask is not None else None
        return self.block(hidden, cos, sin, 0, cache, slots, mask)


def init_adapter(model: LlamaForCausalLM, exit_layer: int, architecture: str, init_layer: int | None,
                 base_name: str = "") -> DraftAdapter:
    """A new adapter for ``model`` at ``exit_layer``; its block copies decoder layer ``init_layer``
    (its MLP too for ``decoder_layer``), or is randomly initialised when ``init_layer`` is None."""
    check_exit_layer(exit_layer, model.num_layers)
    size = model.config.intermediate_size if architecture == "decoder_layer" else 0
    config = AdapterConfig(exit_layer, architecture, size, base_fingerprint(model), base_name)
    adapter = DraftAdapter(model.config, config).to(model.device, torch.float32)
    if init_layer is not None:
        if not 0 <= init_layer < model.num_layers:
            raise LayerskipError(f"`init_layer` {init_layer} outside 0..{model.num_layers - 1}")
        layer = model.model.layers[init_layer]
        if layer.self_attn.qkv_proj is not None:
            raise LayerskipError("init_adapter copies the checkpoint's own layers: load the model with prepare=False")
        source = layer.state_dict()
        adapter.block.load_state_dict({k: v for k, v in source.items() if k in adapter.block.state_dict()}, strict=True)
    else:
        for module in adapter.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
    return adapter


def save_adapter(adapter: DraftAdapter, directory: Path, extra: dict[str, Any] | None = None) -> None:
    """``adapter.safetensors`` (float32) + ``adapter.json``, each written atomically."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in adapter.state_dict().items()}
    tmp = directory / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / ADAPTER_WEIGHTS)
    record = {**asdict(adapter.config), **(extra or {})}
    tmp_json = directory / (ADAPTER_CONFIG + ".tmp")
    tmp_json.write_text(json.dumps(record, indent=2) + "\n")
    tmp_json.replace(directory / ADAPTER_CONFIG)


def read_adapter_config(directory: Path | str) -> AdapterConfig:
    """The adapter's config, validated (no weights read)."""
    path = Path(directory)
    if not path.is_dir():
        raise LayerskipError(f"`draft_adapter` {directory}: no such directory")
    raw = read_json_object(path / ADAPTER_CONFIG, f"`draft_adapter` {path / ADAPTER_CONFIG}",
                           f"`draft_adapter` {directory}: missing {ADAPTER_CONFIG}")
    return AdapterConfig.from_dict(raw, f"`draft_adapter` {path / ADAPTER_CONFIG}")


def load_adapter(directory: Path | str, model: LlamaForCausalLM) -> DraftAdapter:
    """The adapter in ``directory`` on ``model``'s device and dtype; refuses one trained for another base."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_adapter_config(directory)
    check_exit_layer(config.exit_layer, model.num_layers, f"`draft_adapter` {directory}: exit layer")
    if config.base_fingerprint != base_fingerprint(model):
        raise LayerskipError(
            f"`draft_adapter` {directory} was trained for another base checkpoint"
            f"{' (' + config.base_name + ')' if config.base_name else ''}: fingerprint {config.base_fingerprint}, "
            f"this model's is {base_fingerprint(model)}"
        )
    try:
        tensors = load_file(str(Path(directory) / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise LayerskipError(f"`draft_adapter` {directory}: cannot read {ADAPTER_WEIGHTS} ({exc})") from None
    adapter = DraftAdapter(model.config, config)
    try:
        adapter.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise LayerskipError(f"`draft_adapter` {directory}: weights do not match adapter.json ({str(exc).splitlines()[0]})") from None
    adapter.to(model.device, model.dtype).eval().requires_grad_(False)
    return adapter
