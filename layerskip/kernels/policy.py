"""The one place that decides how a model's arithmetic runs on this machine.

Every choice of dtype and kernel is made here, from one capability probe (``probe()``, once per
process: the CPU's feature flags and model name, whether oneDNN is there and has native bf16 kernels,
CUDA), and everything else asks:

- ``auto_dtype``: what ``dtype="auto"`` loads. On CUDA bfloat16 (float16 where bf16 is not
  supported). On a CPU bfloat16 only with native bf16 (``Capabilities.native_bf16``: oneDNN's bf16
  kernels, AVX-512 BF16 or AMX) and for models whose decoder layers stream at least
  ``BF16_MIN_LAYER_BYTES`` of float32 weights each: without native bf16 a bf16 linear converts its
  weight on every call (2-3x slower than float32, measured); with it a step reads half the bytes but
  pays a fixed cost per layer, so bf16 wins only once a layer streams enough (SmolLM2-135M, 13.5 MiB a
  layer: 13.6 vs 19 ms a step; the shipped 10M model, 2.8 MiB: 4.5 vs 3.2 ms; BENCHMARKS.md, "Engine
  speed"). A rule from measurements, not a timing at load.
- ``attention_dtype``: rotary embedding, attention and the KV cache run in float32 on a CPU (its
  16-bit ``scaled_dot_product_attention`` is 3-10x slower for decoding's one-token queries, and the
  cache is a few percent of a step's bytes), in the model dtype elsewhere.
- ``native_kernels_problem``: whether layerskip's CPU kernels (``layerskip.kernels.native``) are used:
  they need x86-64 with AVX-512 BF16 and BW (the instruction set ``csrc/`` is written for), a C++
  compiler and ninja, and a successful build; ``LAYERSKIP_NATIVE=0`` turns them off.
- ``linear_kernel``: per weight, ``streamed`` (the native weight-streaming bf16 kernel), ``packed``
  (oneDNN, prepacked once: float32, and bfloat16 with native bf16) or ``dense`` (``F.linear``).
  A requested kernel where it does not apply falls back the same way; ``torch.compile`` cannot trace
  oneDNN's prepacked weights, so for a compiled model ``packed`` becomes ``dense`` (inductor prepacks
  those itself), weight by weight.
- ``native_attention``: attention of up to ``NATIVE_ATTENTION_QUERIES`` query tokens over a KV cache on
  the native kernel (requested ``auto`` or ``streamed``: what users get), else SDPA.
- ``decoder_blocks``: whether each decoder sublayer of an eager bf16 model runs as one native call
  (``layerskip.kernels.blocks``): where native attention runs and every projection streams, in
  Llama-family layers only.
- ``compile_problem``: whether ``torch.compile`` can build kernels for a device (and model) here.

``decisions()`` lists them for ``layerskip env``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from layerskip.kernels import native
from layerskip.model.config import ModelConfig

#: requested kernel names: ``auto`` (the fastest that applies) or one kernel wherever it applies
KERNELS = ("auto", "streamed", "packed", "dense")
#: query tokens up to which attention over a KV cache runs the native kernel (decoding, verification)
NATIVE_ATTENTION_QUERIES = 16
#: float32 weight bytes per decoder layer from which a bf16 step is faster on a native-bf16 CPU
BF16_MIN_LAYER_BYTES = 8 * 2**20
#: the CPU features layerskip's kernels are written for
NATIVE_FEATURES = frozenset({"avx512_bf16", "avx512bw"})


@dataclass(frozen=True)
class Capabilities:
    """What this machine offers, probed once (``probe()``)."""

    machine: str
    cpu_model: str
    cpu_flags: frozenset[str]
    onednn: bool
    #: oneDNN has native bf16 kernels here (AVX-512 BF16 or AMX): the one test of native bf16
    native_bf16: bool
    cuda: bool

    @property
    def native_isa(self) -> bool:
        """Whether the CPU has the instruction set of layerskip's kernels (x86-64, AVX-512 BF16 and BW)."""
        return self.machine in ("x86_64", "amd64") and NATIVE_FEATURES <= self.cpu_flags


def _cpuinfo() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags as Linux lists them (elsewhere: ``platform``, no flags)."""
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return name, flags
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == (platform.processor() or platform.machine()):
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return name, flags


@functools.cache
def probe() -> Capabilities:
    """This machine's capabilities (once per process)."""
    name, flags = _cpuinfo()
    onednn = torch.backends.mkldnn.is_available()
    return Capabilities(machine=platform.machine().lower(), cpu_model=name, cpu_flags=flags, onednn=onednn,
                        native_bf16=onednn and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                        cuda=torch.cuda.is_available())


def layer_weight_bytes(config: ModelConfig) -> int:
    """Float32 bytes of one decoder layer's projections (what a decoding step streams per layer)."""
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    return 4 * config.hidden_size * (2 * q + 2 * kv + 3 * config.intermediate_size)


def auto_dtype(device: torch.device, config: ModelConfig | None = None) -> torch.dtype:
    """The dtype ``auto`` loads for ``config`` on ``device`` (module docstring; without a config the
    hardware alone decides)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    big = config is None or layer_weight_bytes(config) >= BF16_MIN_LAYER_BYTES
    return torch.bfloat16 if probe().native_bf16 and big else torch.float32


def attention_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype of rotary embedding, attention and the KV cache for a model of ``dtype`` on ``device``."""
    return torch.float32 if device.type == "cpu" else dtype


def cpu_compiler_problem() -> str | None:
    """Why no C++ compiler is found for kernels built on a CPU (None: one is)."""
    return None if native.cpu_compiler() else "no C++ compiler (g++ or clang++; apt-get install g++)"


@functools.cache
def _native_kernels_problem() -> str | None:
    caps = probe()
    if not caps.native_isa:
        return "the CPU has no AVX-512 BF16"
    problem = cpu_compiler_problem()
    if problem:
        return problem
    if not native.ninja():
        return "ninja is not installed (pip install ninja)"
    return native.load(native.current_build(caps.cpu_flags))


def native_kernels_problem() -> str | None:
    """Why layerskip's native CPU kernels are not used here (None: they are, built on first use)."""
    if os.environ.get("LAYERSKIP_NATIVE", "1") == "0":
        return "native kernels are off (LAYERSKIP_NATIVE=0)"
    return _native_kernels_problem()


def native_kernels() -> bool:
    """Whether layerskip's native CPU kernels are loaded (building them on first use)."""
    return native_kernels_problem() is None


def rebuild_native_kernels() -> str | None:
    """Drop this machine's build of the native kernels, then build and load them as on first use; why
    not (None: built and loaded). Call it before anything in this process loads them (``layerskip env
    --rebuild True`` does): a process keeps the kernels it loaded until it ends."""
    caps = probe()
    if caps.native_isa and not _native_kernels_problem.cache_info().currsize:
        try:
            native.remove(native.current_build(caps.cpu_flags))
        except native.BuildError as error:
            return str(error)
    return native_kernels_problem()


def check_kernel(requested: str) -> str:
    """``requested`` if it names a kernel (``KERNELS``), else a ``ValueError``."""
    if requested not in KERNELS:
        raise ValueError(f"unknown kernel {requested!r} (use {', '.join(KERNELS)})")
    return requested


def packs(weight: torch.Tensor) -> bool:
    """Whether oneDNN can prepack ``weight``: float32 on a CPU with oneDNN, or bfloat16 with native bf16
    (oneDNN refuses to pack bf16 elsewhere)."""
    if weight.device.type != "cpu" or not probe().onednn:
        return False
    return weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and probe().native_bf16)


def streams(weight: torch.Tensor) -> bool:
    """Whether the native weight-streaming kernel applies to ``weight``: bfloat16 on a CPU where the
    native kernels are loaded, with an even input width."""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and weight.shape[1] % 2 == 0
            and native_kernels())


def linear_kernel(weight: torch.Tensor, requested: str = "auto", for_compile: bool = False) -> str:
    """The kernel of one weight ``[out, in]``: ``streamed``, ``packed`` or ``dense`` (module docstring)."""
    if check_kernel(requested) == "dense":
        return "dense"
    if requested in ("auto", "streamed") and streams(weight):
        return "streamed"
    return "packed" if packs(weight) and not for_compile else "dense"


def native_attention(device: torch.device, head_dim: int, requested: str = "auto") -> bool:
    """Whether attention over a KV cache of up to ``NATIVE_ATTENTION_QUERIES`` tokens runs the native kernel.
    The kernel is softmax(q k^T * scale + mask) v with the caller's scale and additive mask, so it is right
    for every family's attention (Gemma 3's sliding-window masks and ``query_pre_attn_scalar`` scale
    included) wherever its head size fits: a multiple of 16 up to 128, or 256 (Gemma 3's)."""
    return (check_kernel(requested) in ("auto", "streamed") and device.type == "cpu" and head_dim % 16 == 0
            and (head_dim <= 128 or head_dim == 256) and native_kernels())


def decoder_blocks(attention_native: bool, kernels: list[str], for_compile: bool, config: ModelConfig | None = None) -> bool:
    """Whether a decoder sublayer whose projections got ``kernels`` runs as one native call: eager
    decoding with native attention and every projection streamed, in a Llama-family layer (the native
    blocks compute Llama's sublayer: one norm, SwiGLU; never Gemma 3's four (1 + w) norms, q/k norms and
    GELU). ``config``: the model's (None: no model in view, as for ``layerskip env`` without one)."""
    llama = config is None or config.gemma3 is None
    return llama and attention_native and not for_compile and bool(kernels) and all(k == "streamed" for k in kernels)


def native_norms(device: torch.device, config: ModelConfig, requested: str = "auto") -> bool:
    """Whether a Gemma 3 model's norms (four a layer, and q/k) run as one native call each on bfloat16
    activations (``torch.ops.layerskip.gemma_rms_norm``; ~9 ATen ops otherwise): on a CPU where the native
    kernels load, unless ``requested`` names another kernel. Float32 activations keep the ATen path."""
    return (config.gemma3 is not None and check_kernel(requested) in ("auto", "streamed") and device.type == "cpu"
            and native_kernels())


def compile_problem(device: torch.device, config: ModelConfig | None = None) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device`` (and the model of ``config``) here (None: it can)."""
    if config is not None and config.gemma3 is not None:
        return "torch.compile is not available for Gemma 3 models (its layers take rotary tables and masks per layer type)"
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "torch.compile on CUDA needs triton (pip install triton)"
    if cpu_compiler_problem():
        return "torch.compile on a CPU needs a C++ compiler (g++ or clang++; apt-get install g++)"
    return None


KERNEL_NAMES = {"streamed": "layerskip's weight-streaming kernel (native)", "packed": "oneDNN, weights prepacked",
                "dense": "PyTorch's F.linear"}
FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX BF16"))


def decisions(device: torch.device, config: ModelConfig | None = None) -> dict[str, str]:
    """What this module decides for a model of ``config`` on ``device``, by name (``layerskip env``)."""
    caps = probe()
    problem = native_kernels_problem() if device.type == "cpu" else "not on a CPU"
    dtype = auto_dtype(device, config)
    sized = f" (a decoder layer streams {layer_weight_bytes(config) / 2**20:.1f} MiB of float32 weights)" if config else ""
    weight = torch.empty(32, 64, dtype=dtype, device=device)
    attention = native_attention(device, config.head_dim if config else 64)
    features = ", ".join(name for flag, name in FEATURES if flag in caps.cpu_flags) or "none of AVX2, AVX-512"
    return {
        "cpu": f"{caps.cpu_model} ({caps.machine}; {features})",
        "native bf16": "yes (oneDNN bf16 kernels)" if caps.native_bf16 else "no",
        "native kernels": (f"built ({native.current_build(caps.cpu_flags).directory})" if problem is None
                           else f"not used: {problem}" + (f"; {native.FALLBACK}" if device.type == "cpu" else "")),
        "dtype auto": f"{str(dtype).removeprefix('torch.')}{sized}",
        "attention dtype": str(attention_dtype(device, dtype)).removeprefix("torch."),
        "linear kernel": KERNEL_NAMES[linear_kernel(weight)],
        "attention": (f"layerskip's cached attention for up to {NATIVE_ATTENTION_QUERIES} query tokens, SDPA beyond"
                      if attention else "PyTorch's scaled_dot_product_attention"),
        "decoder blocks": ("one native call per sublayer (eager bf16)" if decoder_blocks(attention, ["streamed"], False, config)
                           and dtype == torch.bfloat16 else "no (module path)"),
        "torch.compile": compile_problem(device, config) or "available (inductor)",
    }

