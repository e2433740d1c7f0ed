"""What this machine runs a model with: one report of the choices the kernels, dtype and thread code make
here (``layerskip env``)."""

from __future__ import annotations

import platform
import sys

import torch

from layerskip import __version__

from layerskip.kernels import native
from layerskip.kernels.compiled import compiler_problem
from layerskip.model.config import ModelConfig
from layerskip.kernels.linear import NATIVE_ATTENTION_QUERIES, choose_kernel, cpu_has_native_bf16
from layerskip.checkpoints.loading import default_model_path, layer_weight_bytes, resolve_device, resolve_dtype, resolve_model_path
from layerskip.kernels.threads import available_cpus

KERNEL_NAMES = {"streamed": "layerskip's weight-streaming kernel (native)", "packed": "oneDNN, weights prepacked",
                "dense": "PyTorch's F.linear"}
FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX BF16"))


def cpu_description() -> str:
    flags = native.cpu_flags()
    found = [name for flag, name in FEATURES if flag in flags]
    return f"{native.cpu_model()} ({platform.machine()}; {', '.join(found) or 'no AVX2'})"


def report(model: str | None = None, device: str = "auto", rebuild: bool = False) -> dict[str, str]:
    """Name -> what it is here, in the order ``layerskip env`` prints them. ``rebuild``: build the native
    kernels afresh first. Builds them if they are not built (one stderr line)."""
    dev = resolve_device(device)
    problem = native.rebuild() if rebuild else native.cpu_kernels_problem()
    path = resolve_model_path(model) if model else default_model_path()
    config = ModelConfig.from_file(path / "config.json")
    dtype = resolve_dtype("auto", dev, config)
    mib = layer_weight_bytes(config) / 2**20
    facts = {
        "layerskip": __version__,
        "python": sys.version.split()[0],
        "torch": f"{torch.__version__} (oneDNN: {'yes' if torch.backends.mkldnn.is_available() else 'no'})",
        "cpu": cpu_description(),
        "native bf16": "yes (oneDNN bf16 kernels)" if cpu_has_native_bf16() else "no",
        "threads": f"{torch.get_num_threads()} (CPUs this process may run on: {available_cpus()}; --threads, LAYERSKIP_THREADS)",
        "native kernels": (f"built ({native.current_build().directory})" if problem is None
                           else f"not used: {problem}; {native.FALLBACK}"),
        "device": str(dev),
        "model": str(path),
        "dtype auto": f"{str(dtype).removeprefix('torch.')} (a decoder layer streams {mib:.1f} MiB of float32 weights)",
        "linear kernel": KERNEL_NAMES[choose_kernel(torch.empty(32, 64, dtype=dtype, device=dev))],
        "attention": (f"layerskip's cached attention for up to {NATIVE_ATTENTION_QUERIES} query tokens, SDPA beyond"
                      if dev.type == "cpu" and problem is None else "PyTorch's scaled_dot_product_attention"),
        "--compile": compiler_problem(dev) or "available (inductor)",
        "cuda": f"{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "not available",
    }
    return facts
