"""Inference-time linear layers: fused q/k/v and gate/up projections, int8 weight-only quantization.

``prepare_for_inference(model, quantize)`` transforms a loaded ``LlamaForCausalLM`` in place, after
its checkpoint is read (parameter names on disk and the unfused training model are unchanged):

- q/k/v become one ``FusedLinear`` (``attn.qkv_proj``) and gate/up another (``mlp.gate_up_proj``):
  one matmul reads the input once and the concatenated weight once; the outputs are views of one
  result ``[batch, T, sum(out)]``. In float32 every output row is the same dot product as before.
- ``quantize="int8"``: every decoder projection stores int8 weights with one float scale per output
  channel (symmetric absmax, ``w ≈ q * scale``); the LM head and embedding stay in the model dtype.

Kernel choice (measured on a 2-core AVX2 EPYC without AVX-512/AMX; see the report in issue 13):
float32 uses ``F.linear`` (MKL); MKL-prepacked (``mkl._mkl_linear``) and oneDNN fp32 were no faster
for these shapes at 1..9 tokens, and prepacking is per batch size, which would make a 1-token step
and a (k+1)-token verification round differently and break float32 exactness. Int8 uses
``aten._weight_int8pack_mm`` with bfloat16 activations on CPU (its float32-activation path was
~15x slower here) and dequantizes on other devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from layerskip.errors import LayerskipError
from layerskip.fingerprint import base_fingerprint

QUANTIZATIONS = ("none", "int8")


class Int8Linear(nn.Module):
    """Weight-only int8 linear map: ``y = (x @ q.T) * scale + bias``.

    ``qweight`` ``[out, in]`` int8, ``scale`` ``[out]`` float32; x ``[..., in]`` -> ``[..., out]`` in x's dtype.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by, ``[out, in]`` float32."""
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if x.device.type == "cpu":
            act = x.reshape(-1, shape[-1]).to(torch.bfloat16)
            y = torch.ops.aten._weight_int8pack_mm(act, self.qweight, self.scale.to(torch.bfloat16)).to(x.dtype)
            y = y.view(*shape[:-1], -1)
        else:
            y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, quantize: str) -> nn.Module:
    """The inference kernel for one weight ``[out, in]``: dense ``nn.Linear`` or ``Int8Linear``."""
    if quantize == "int8":
        return Int8Linear(weight, bias)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return layer


class FusedLinear(nn.Module):
    """Several linear maps of the same input as one matmul over row-concatenated weights.

    x ``[..., in]`` -> a tuple of ``[..., out_i]`` views, one per fused layer, in order.
    """

    def __init__(self, parts: Sequence[nn.Linear], quantize: str = "none") -> None:
        super().__init__()
        self.sizes = [p.out_features for p in parts]
        weight = torch.cat([p.weight for p in parts])
        biases = [p.bias for p in parts]
        bias = None if biases[0] is None else torch.cat(biases)  # type: ignore[arg-type]
        self.inner = make_linear(weight, bias, quantize)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.inner(x).split(self.sizes, dim=-1)


def check_quantize(name: str) -> str:
    if name not in QUANTIZATIONS:
        raise LayerskipError(f"unknown --quantize {name!r} (use {' or '.join(QUANTIZATIONS)})")
    return name


def prepare_for_inference(model: nn.Module, quantize: str = "none") -> nn.Module:
    """Fuse q/k/v and gate/up of every decoder layer of a ``LlamaForCausalLM`` and optionally
    quantize its projections to int8 (in place; returns the model). Inference only: the fused model's
    parameter names differ from the checkpoint's, so train and save the unprepared model."""
    check_quantize(quantize)
    base_fingerprint(model)  # of the checkpoint's own weights, cached before they are fused or quantized
    with torch.no_grad():
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv_proj = FusedLinear([attn.q_proj, attn.k_proj, attn.v_proj], quantize)
            mlp.gate_up_proj = FusedLinear([mlp.gate_proj, mlp.up_proj], quantize)
            del attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
            if quantize == "int8":
                attn.o_proj = make_linear(attn.o_proj.weight, attn.o_proj.bias, quantize)
                mlp.down_proj = make_linear(mlp.down_proj.weight, mlp.down_proj.bias, quantize)
    return model
