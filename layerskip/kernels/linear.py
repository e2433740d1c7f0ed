"""Inference-time linear layers: fused q/k/v and gate/up projections, int8 weight-only quantization.

``prepare_for_inference(model, quantize)`` transforms a loaded ``LlamaForCausalLM`` in place, after
its checkpoint is read (parameter names on disk and the unfused training model are unchanged):

- q/k/v become one ``FusedLinear`` (``attn.qkv_proj``) and gate/up another (``mlp.gate_up_proj``):
  one matmul reads the input once and the concatenated weight once; the outputs are views of one
  result ``[batch, T, sum(out)]``. In float32 every output row is the same dot product as before.
- ``quantize="int8"``: every decoder projection stores int8 weights with one float scale per output
  channel (symmetric absmax, ``w ≈ q * scale``); the LM head and embedding stay in the model dtype.

Kernels (chosen per weight by ``layerskip.kernels.policy.linear_kernel``; measured in BENCHMARKS.md, "Engine speed"):

- ``streamed`` (``StreamedLinear``): bfloat16 weights on a CPU with AVX-512 BF16, through layerskip's
  own kernel (``layerskip/kernels/csrc/bf16_stream.cpp``, built on first use by ``layerskip.kernels.native``). It
  reads every weight byte once, in address order, for 1 to 12 tokens alike: at the machine's read
  bandwidth for a decoding step, ~1.8x oneDNN's bf16 kernel on a 2-core Zen 5, and a 5-token
  verification costs about what one token does.
- ``packed`` (``PackedLinear``): float32 weights on a CPU (and bfloat16 where the streamed kernel
  cannot be built) prepacked once for oneDNN: with the weights streamed from memory it reads them at
  about twice the speed of ``F.linear`` (whose MKL path runs one thread for a single token).
- ``dense``: ``F.linear``, for other dtypes and devices.

Both CPU kernels compute every output row the same way however many rows there are (``F.linear``
does not), so a one-token step and a verification of k+1 tokens give the same logits bit for bit.
Int8 uses ``aten._weight_int8pack_mm`` with bfloat16 activations on CPU (its float32-activation path
was ~15x slower here) and dequantizes on other devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from layerskip.errors import LayerskipError
from layerskip.model.config import ModelConfig
from layerskip.model.fingerprint import base_fingerprint
from layerskip.kernels.blocks import AttentionBlock, MLPBlock
from layerskip.kernels.policy import (NATIVE_ATTENTION_QUERIES, check_kernel, decoder_blocks, linear_kernel,
                                     native_attention, native_norms)
from layerskip.model.gemma3 import attach_native_norms

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


def keep(module: nn.Module, weight: torch.Tensor) -> None:
    """Give a packed kernel ``module`` its source ``weight`` as a parameter too (the LM head's: the
    embedding table and the draft heads' rows)."""
    module.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)


class StreamedLinear(nn.Module):
    """``y = x @ weight.T + bias`` through ``torch.ops.layerskip.bf16_linear`` over a weight packed once
    (``pack_bf16``: blocks of 32 rows in the VNNI order of ``vdpbf16ps``; module docstring).

    x ``[..., in]`` bfloat16 -> ``[..., out]``. ``keep_weight``: also keep ``weight`` as a parameter (the
    LM head's is the embedding table too). A registered op: ``torch.compile`` traces it as one call.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, keep_weight: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed", torch.ops.layerskip.pack_bf16(weight.detach().contiguous()))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        if keep_weight:
            keep(self, weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.layerskip.bf16_linear(x, self.packed, self.out_features)
        return y if self.bias is None else y + self.bias


class PackedLinear(nn.Module):
    """``y = x @ weight.T + bias`` with the weight reordered once into oneDNN's blocked layout.

    x ``[..., in]`` -> ``[..., out]``. ``keep_weight``: keep ``weight`` as a parameter too (the LM head,
    whose weight is also the embedding table and the draft heads' source); otherwise only the packed
    copy is kept. Inference only (no autograd).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, keep_weight: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # a plain attribute, not a buffer: an opaque oneDNN tensor that state_dict and .to() must not see
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        if keep_weight:
            keep(self, weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, quantize: str = "none", kernel: str = "auto",
                keep_weight: bool = False, for_compile: bool = False) -> nn.Module:
    """The inference module for one weight ``[out, in]``: ``Int8Linear`` or the kernel the policy picks
    (``layerskip.kernels.policy.linear_kernel``: ``StreamedLinear``, ``PackedLinear`` or ``nn.Linear``;
    ``keep_weight``: the packed kernels also keep the weight as a parameter)."""
    if quantize == "int8":
        return Int8Linear(weight, bias)
    chosen = linear_kernel(weight, kernel, for_compile)
    if chosen == "streamed":
        return StreamedLinear(weight, bias, keep_weight)
    if chosen == "packed":
        return PackedLinear(weight, bias, keep_weight)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return layer


class FusedLinear(nn.Module):
    """Several linear maps of the same input as one matmul over row-concatenated weights.

    x ``[..., in]`` -> a tuple of views of the one result, one per fused layer in order, or one per
    group of adjacent layers: ``groups=(2, 1)`` over q, k, v gives ``([..., q+k], [..., v])``.
    """

    def __init__(self, parts: Sequence[nn.Linear], quantize: str = "none", kernel: str = "auto",
                 groups: Sequence[int] | None = None, for_compile: bool = False) -> None:
        super().__init__()
        counts = list(groups or [1] * len(parts))
        if sum(counts) != len(parts):
            raise ValueError(f"groups {counts} do not cover {len(parts)} layers")
        bounds = [sum(counts[:i]) for i in range(len(counts) + 1)]
        self.sizes = [sum(p.out_features for p in parts[a:b]) for a, b in zip(bounds, bounds[1:])]
        weight = torch.cat([p.weight for p in parts])
        biases = [p.bias for p in parts]
        bias = None if biases[0] is None else torch.cat(biases)  # type: ignore[arg-type]
        self.inner = make_linear(weight, bias, quantize, kernel, for_compile=for_compile)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.inner(x).split(self.sizes, dim=-1)


def check_quantize(name: str) -> str:
    if name not in QUANTIZATIONS:
        raise LayerskipError(f"unknown `quantize` {name!r} (use {' or '.join(QUANTIZATIONS)})")
    return name


def prepare_layer(layer: nn.Module, quantize: str = "none", kernel: str = "auto", for_compile: bool = False) -> None:
    """Fuse q/k/v (and gate/up, if the layer has an MLP) of one ``DecoderLayer`` and give every
    projection the kernel the policy picks for it (in place; inference only)."""
    attn = layer.self_attn
    attn.qkv_proj = FusedLinear([attn.q_proj, attn.k_proj, attn.v_proj], quantize, kernel, (2, 1), for_compile)
    del attn.q_proj, attn.k_proj, attn.v_proj
    attn.o_proj = make_linear(attn.o_proj.weight, attn.o_proj.bias, quantize, kernel, for_compile=for_compile)
    if hasattr(layer, "mlp"):
        mlp = layer.mlp
        mlp.gate_up_proj = FusedLinear([mlp.gate_proj, mlp.up_proj], quantize, kernel, for_compile=for_compile)
        del mlp.gate_proj, mlp.up_proj
        mlp.down_proj = make_linear(mlp.down_proj.weight, mlp.down_proj.bias, quantize, kernel, for_compile=for_compile)


def kernel_name(module: nn.Module) -> str:
    """The kernel a prepared projection runs (``streamed``, ``packed``, ``dense`` or ``int8``)."""
    inner = module.inner if isinstance(module, FusedLinear) else module
    names = {StreamedLinear: "streamed", PackedLinear: "packed", Int8Linear: "int8"}
    return names.get(type(inner), "dense")


def attach_blocks(layer: nn.Module, for_compile: bool = False, config: ModelConfig | None = None) -> None:
    """Give a prepared ``DecoderLayer`` (``prepare_layer``) of a model of ``config`` each sublayer as one
    native call (``layerskip.kernels.blocks``) where the policy says so (``decoder_blocks``; in place)."""
    attn = layer.self_attn
    native = attn.native_queries > 0
    if decoder_blocks(native, [kernel_name(attn.qkv_proj), kernel_name(attn.o_proj)], for_compile, config):
        layer.attn_block = AttentionBlock(layer.input_layernorm, attn)
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and decoder_blocks(native, [kernel_name(mlp.gate_up_proj), kernel_name(mlp.down_proj)],
                                              for_compile, config):
            layer.mlp_block = MLPBlock(layer.post_attention_layernorm, mlp)


def attach_norms(module: nn.Module, config: ModelConfig, device: torch.device, kernel: str = "auto") -> None:
    """Give the Gemma 3 norms under ``module`` (a model of ``config``, or its draft adapter's block) the
    native one-call norm where the policy says so (``native_norms``; in place, inference only)."""
    if native_norms(device, config, kernel):
        attach_native_norms(module)


def prepare_for_inference(model: nn.Module, quantize: str = "none", kernel: str = "auto",
                          for_compile: bool = False) -> nn.Module:
    """Prepare every decoder layer of a ``LlamaForCausalLM`` (``prepare_layer``: fused projections,
    optionally int8, the kernel the policy picks per weight), attention of up to
    ``NATIVE_ATTENTION_QUERIES`` tokens over a KV cache on the native kernel and sublayers as one
    native call where the policy says so, and the LM head's kernel (in place; returns the model).
    ``kernel``: ``auto`` or one kernel everywhere it applies (``layerskip.kernels.policy``).
    ``for_compile``: no oneDNN-prepacked weights, which ``torch.compile`` cannot trace
    (``layerskip.kernels.compiled`` prepacks dense ones itself; the streamed kernel is a traceable op),
    and no one-call sublayers. Inference only: the prepared model's parameter names differ from the
    checkpoint's, so train and save the unprepared model."""
    check_quantize(quantize)
    check_kernel(kernel)
    base_fingerprint(model)  # of the checkpoint's own weights, cached before they are fused or quantized
    attention = native_attention(model.device, model.config.head_dim, kernel)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.native_queries = NATIVE_ATTENTION_QUERIES if attention else 0
            prepare_layer(layer, quantize, kernel, for_compile)
            attach_blocks(layer, for_compile, model.config)
        attach_norms(model, model.config, model.device, kernel)
        head = model.lm_head
        if linear_kernel(head.weight, kernel) != "dense":
            model.lm_head = make_linear(head.weight, head.bias, kernel=kernel, keep_weight=True)
    return model
