"""Native CPU kernels of layerskip, built from ``layerskip/kernels/csrc`` once per machine and loaded on first use.

``load(current_build(flags))`` loads (building them the first time) the ops of ``csrc/``, written for CPUs
with AVX-512 BF16; whether they are used here is decided by ``layerskip.kernels.policy``
(``native_kernels()``), which asks this module:

- ``torch.ops.layerskip.pack_bf16`` / ``bf16_linear`` (``bf16_stream.cpp``): the weight-streaming bf16
  matrix products of ``layerskip.kernels.linear.StreamedLinear``;
- ``torch.ops.layerskip.cached_attention`` (``cached_attention.cpp``): attention of a few query
  tokens over the static KV cache (``layerskip.model.decoder.Attention``);
- ``torch.ops.layerskip.attention_block`` / ``mlp_block`` (``decoder_block.cpp``): a whole decoder
  sublayer in one call over the two kernels above (``layerskip.kernels.blocks``).

The build, and why it cannot hang or collide:

- It lives in ``$LAYERSKIP_KERNELS/KEY`` (default ``$LAYERSKIP_HOME/kernels``, ``~/.cache/layerskip/kernels``), where KEY digests what
  determines the binary: every file of ``csrc/``, torch's version and build, the Python ABI, the
  compiler and its version, the flags and the CPU's feature flags (``-march=native``). Not the
  environment's path: every install of the same torch on one machine shares one build.
- It runs in a child process (``torch.utils.cpp_extension``) with a time limit (``BUILD_TIMEOUT_S``),
  into a temporary directory renamed into place when complete (``layerskip.files.storage.build_directory``),
  so a build killed at any moment leaves nothing that looks finished.
- Builders of one KEY take an advisory ``flock`` on ``KEY.lock``, which the kernel releases when its
  holder dies: a process that finds a build under way waits for it (at most ``LOCK_WAIT_S``) and then
  loads what it built; a leftover lock file of a dead process is free at once.
- A build that fails, times out or is still locked after the wait is one stderr line saying why and
  which kernels run instead, and the process goes on with PyTorch's (oneDNN's linear, SDPA).

"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from layerskip.files.storage import build_directory, layerskip_home, status

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = ("bf16_stream.cpp", "cached_attention.cpp", "decoder_block.cpp")
LIBRARY = "layerskip_cpu_kernels"
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)
#: seconds a build may take (two 2-core compiles of ~20 s each, on a loaded machine) before it is given up
BUILD_TIMEOUT_S = float(os.environ.get("LAYERSKIP_BUILD_TIMEOUT", 600))
#: seconds to wait for another process's build of the same kernels before going on without them
LOCK_WAIT_S = float(os.environ.get("LAYERSKIP_BUILD_WAIT", 600))
FALLBACK = "using oneDNN's linear and PyTorch's attention instead"

#: what the child process runs: build the library into argv[1] (it is loaded there too, and discarded)
_BUILD_SCRIPT = """
import json, sys
from torch.utils import cpp_extension
spec = json.loads(sys.argv[2])
cpp_extension.load(name=spec["name"], sources=spec["sources"], extra_cflags=spec["cflags"],
                   extra_ldflags=spec["ldflags"], build_directory=sys.argv[1], is_python_module=False, verbose=False)
"""


def cpu_compiler() -> str | None:
    """The C++ compiler ``torch.utils.cpp_extension`` will use (``$CXX``, else ``c++``/``g++``/``clang++``)."""
    for name in (os.environ.get("CXX", ""), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def source_digest() -> str:
    """A digest of every file of ``csrc/`` (``cpp_extension`` hashes only the sources it compiles)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".cpp", ".h")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@functools.cache
def compiler_version(compiler: str) -> str:
    """The first line of ``compiler --version`` (empty when it does not answer)."""
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.splitlines() or [""])[0]


@dataclass(frozen=True)
class Build:
    """Where the kernels for this machine and install are built: ``directory`` holds ``LIBRARY.so``."""

    key: str
    directory: Path

    @property
    def library(self) -> Path:
        return self.directory / f"{LIBRARY}.so"

    @property
    def lock(self) -> Path:
        return self.directory.with_name(self.directory.name + ".lock")


def build_key(compiler: str, cpu_flags: frozenset[str]) -> str:
    """The digest of everything that determines the built binary (module docstring)."""
    parts = {
        "sources": source_digest(),
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "cxx11_abi": torch.compiled_with_cxx11_abi(),
        "python": f"{sys.implementation.cache_tag}",
        "compiler": compiler_version(compiler) or compiler,
        "cflags": CFLAGS,
        "ldflags": LDFLAGS,
        "cpu": sorted(cpu_flags),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def kernels_root() -> Path:
    """Where builds live: ``$LAYERSKIP_KERNELS``, else ``$LAYERSKIP_HOME/kernels``."""
    return Path(os.environ.get("LAYERSKIP_KERNELS") or layerskip_home() / "kernels").expanduser()


def current_build(cpu_flags: frozenset[str]) -> Build:
    """The build directory of the kernels for a CPU with ``cpu_flags`` (built or not)."""
    key = build_key(cpu_compiler() or "c++", cpu_flags)
    return Build(key, kernels_root() / key)


def _build_path() -> str:
    """``$PATH`` with the interpreter's directory first (where ninja's wheel puts ``ninja`` in a venv)."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _compile(directory: Path) -> None:
    """Build ``LIBRARY.so`` into ``directory`` in a child process, bounded by ``BUILD_TIMEOUT_S``."""
    spec = {"name": LIBRARY, "sources": [str(SOURCE_DIR / s) for s in SOURCES], "cflags": list(CFLAGS),
            "ldflags": list(LDFLAGS)}
    env = dict(os.environ, PATH=_build_path())
    env["TORCH_EXTENSIONS_DIR"] = str(directory)  # nothing outside it
    try:
        done = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT, str(directory), json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(f"the build took longer than {BUILD_TIMEOUT_S:.0f} s (LAYERSKIP_BUILD_TIMEOUT)") from None
    if done.returncode != 0 or not (directory / f"{LIBRARY}.so").is_file():
        raise BuildError(f"building layerskip/kernels/csrc failed: {first_error(done.stderr + done.stdout)}")


class BuildError(Exception):
    """Why a build did not produce the library (one line)."""


def first_error(log: str) -> str:
    """The first compiler error line of a failed build's log (else its last line: a Python error)."""
    lines = [line.strip() for line in log.strip().splitlines() if line.strip()] or ["no output"]
    return next((line for line in lines if " error: " in line or line.startswith("error:")), lines[-1])


def _locked(lock_path: Path, wait_s: float):
    """The open lock file, held exclusively (``flock``), or None after ``wait_s`` seconds of another
    holder. The kernel drops the lock when its holder's process ends, however it ends."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")
    deadline, announced = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.close()
                return None
            if not announced:
                status("layerskip: waiting for another process's build of the CPU kernels")
                announced = True
            time.sleep(0.2)


def ensure_built(build: Build, wait_s: float | None = None) -> None:
    """Make ``build.library`` exist: built here under the lock, or by the process that held it.
    Raises ``BuildError`` (one line) when it cannot."""
    if build.library.is_file():
        return
    with _held(build, wait_s):
        if build.library.is_file():
            return  # built by the process we waited for
        status("layerskip: building layerskip's CPU kernels for this machine, once: ~20 s "
               f"(into {build.directory})")
        build_directory(build.directory, _compile)


def remove(build: Build, wait_s: float | None = None) -> None:
    """Delete ``build`` (under the lock: never under a builder's feet), so the next load builds afresh."""
    with _held(build, wait_s):
        shutil.rmtree(build.directory, ignore_errors=True)


@contextlib.contextmanager
def _held(build: Build, wait_s: float | None) -> Iterator[None]:
    """``build``'s lock held for the block, else ``BuildError`` after ``wait_s`` (default ``LOCK_WAIT_S``)."""
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    handle = _locked(build.lock, wait_s)
    if handle is None:
        raise BuildError(f"another process has been building them for over {wait_s:.0f} s ({build.lock})")
    try:
        yield
    finally:
        handle.close()


def load(build: Build) -> str | None:
    """Load the kernels of ``build`` into this process, building them first if needed; why not (None:
    loaded). A failure is also one stderr line saying which kernels run instead."""
    try:
        ensure_built(build)
        torch.ops.load_library(str(build.library))
    except (BuildError, OSError, RuntimeError) as error:
        reason = (str(error).strip() or type(error).__name__).splitlines()[0]
        status(f"layerskip: native CPU kernels unavailable ({reason}); {FALLBACK}")
        return reason
    _register_fakes()
    return None


@functools.cache
def _register_fakes() -> None:
    """The ops' output shapes for ``torch.compile``'s tracing (once per process)."""
    torch.library.register_fake("layerskip::bf16_linear")(_bf16_linear_shape)
    torch.library.register_fake("layerskip::cached_attention")(_cached_attention_shape)


def ninja() -> bool:
    """Whether ninja, which ``cpp_extension`` builds with, is found (the interpreter's directory first)."""
    return shutil.which("ninja", path=_build_path()) is not None


def _bf16_linear_shape(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """The output of ``bf16_linear`` without computing it (for ``torch.compile``'s tracing)."""
    return x.new_empty((*x.shape[:-1], out_features))


def _cached_attention_shape(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                            scale: float) -> torch.Tensor:
    """The output of ``cached_attention`` (``[B, T, H, D]``, like q) without computing it."""
    return q.new_empty(q.shape)
