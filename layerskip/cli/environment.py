"""What ``layerskip env`` reports: versions, threads, and the kernel and dtype policy's decisions for a
model on this machine (``layerskip.kernels.policy.decisions``)."""

from __future__ import annotations

import sys

import torch

from layerskip import __version__
from layerskip.checkpoints.loading import default_model_path, resolve_device, resolve_model_path
from layerskip.kernels import policy
from layerskip.kernels.threads import available_cpus
from layerskip.model.config import ModelConfig


def report(model: str | None = None, device: str = "auto", rebuild: bool = False) -> dict[str, str]:
    """Name -> what it is here, in the order ``layerskip env`` prints them. ``rebuild``: build the native
    kernels afresh first. Builds them if they are not built (one stderr line)."""
    dev = resolve_device(device)
    if rebuild:
        policy.rebuild_native_kernels()
    path = resolve_model_path(model) if model else default_model_path()
    config = ModelConfig.from_file(path / "config.json")
    facts = {
        "layerskip": __version__,
        "python": sys.version.split()[0],
        "torch": f"{torch.__version__} (oneDNN: {'yes' if policy.probe().onednn else 'no'})",
        "threads": f"{torch.get_num_threads()} (CPUs this process may run on: {available_cpus()}; --threads, LAYERSKIP_THREADS)",
        "device": str(dev),
        "model": str(path),
        **policy.decisions(dev, config),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
    }
    return facts
