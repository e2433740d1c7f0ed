"""How many CPU threads a model runs on: torch's intra-op pool, which the native kernels'
``at::parallel_for`` (OpenMP) shares.

The default is the number of CPUs this process may run on (``os.sched_getaffinity``: a ``taskset`` or
a container's cpuset counts, not the machine's cores), shared among the local processes of a
``torchrun`` job; ``LAYERSKIP_THREADS`` overrides it. Every thread of a decoding step waits for the
slowest at each parallel region (~100 a step), so one thread on a core that another process keeps busy
slows the whole step to that core's share: on a machine doing other work, run on the cores left free
(README, "Troubleshooting"; BENCHMARKS.md, "Threads").
"""

from __future__ import annotations

import os

import torch

from layerskip.errors import LayerskipError

ENV = "LAYERSKIP_THREADS"
MAX_THREADS = 1024


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """``$LAYERSKIP_THREADS``, else this process's share of its CPUs (module docstring)."""
    value = os.environ.get(ENV)
    if value is not None and value.strip():
        return check_threads(value, ENV)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cpus() // max(1, local_processes))


def check_threads(value: int | str, name: str = "threads") -> int:
    """``value`` as a thread count in ``1..MAX_THREADS``, else one error line naming ``name``."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise LayerskipError(f"{name} must be a whole number of threads, got {value!r}") from None
    if not 1 <= number <= MAX_THREADS:
        raise LayerskipError(f"{name} must be in 1..{MAX_THREADS}, got {number}")
    return number


def set_threads(threads: int | None = None) -> int:
    """Run torch (and the native kernels) on ``threads`` threads (None: ``default_threads()``); returns the count."""
    count = default_threads() if threads is None else check_threads(threads)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
