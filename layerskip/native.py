"""Native CPU kernels of layerskip, built from ``layerskip/csrc`` on first use.

``cpu_kernels()`` builds (once per machine and source version, with ``torch.utils.cpp_extension`` and
``-march=native``; cached under ``~/.cache/torch_extensions``) and loads the ops of ``csrc/``, for CPUs
with AVX-512 BF16:

- ``torch.ops.layerskip.pack_bf16`` / ``bf16_linear`` (``bf16_stream.cpp``): the weight-streaming bf16
  matrix products of ``layerskip.fast_linear.StreamedLinear``;
- ``torch.ops.layerskip.cached_attention`` (``cached_attention.cpp``): attention of a few query
  tokens over the static KV cache (``layerskip.model.Attention``).

It returns False, and ``cpu_kernels_problem()`` says why, where they cannot exist here (no AVX-512
BF16, no C++ compiler or ninja, a failed build); callers then keep PyTorch's kernels (oneDNN's linear,
``scaled_dot_product_attention``). ``LAYERSKIP_NATIVE=0`` turns them off (for side-by-side
measurements and to rule them out).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
from pathlib import Path

import torch

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = ("bf16_stream.cpp", "cached_attention.cpp")


def cpu_compiler_problem() -> str | None:
    """Why no C++ compiler is found for kernels built on a CPU (None: one is)."""
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        return "no C++ compiler (g++ or clang++; apt-get install g++)"
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def _build() -> str | None:
    """Build and load the kernels once per process; why they are not available (None: loaded)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not {"avx512_bf16", "avx512bw"} <= cpu_flags():
        return "the CPU has no AVX-512 BF16"
    problem = cpu_compiler_problem()
    if problem:
        return problem
    from torch.utils import cpp_extension

    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        return "ninja is not installed (pip install ninja)"
    try:
        cpp_extension.load(
            name="layerskip_cpu_kernels",
            sources=[str(SOURCE_DIR / name) for name in SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except (RuntimeError, OSError) as error:
        return f"building layerskip/csrc failed: {str(error).strip().splitlines()[0]}"

    torch.library.register_fake("layerskip::bf16_linear")(_bf16_linear_shape)
    torch.library.register_fake("layerskip::cached_attention")(_cached_attention_shape)
    return None


def _bf16_linear_shape(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """The output of ``bf16_linear`` without computing it (for ``torch.compile``'s tracing)."""
    return x.new_empty((*x.shape[:-1], out_features))


def _cached_attention_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                            scale: float) -> torch.Tensor:
    """The output of ``cached_attention`` (``[B, T, H, D]``, like q) without computing it."""
    return q.new_empty(q.shape)


def cpu_kernels_problem() -> str | None:
    """Why the native CPU kernels are not available here (None: they are; built on first use)."""
    if os.environ.get("LAYERSKIP_NATIVE", "1") == "0":
        return "native kernels are off (LAYERSKIP_NATIVE=0)"
    return _build()


def cpu_kernels() -> bool:
    """Whether the native CPU kernels are loaded (building them on first use)."""
    return cpu_kernels_problem() is None
