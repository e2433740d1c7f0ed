"""Frozen features for draft-adapter training, computed once and reused across epochs.

The base model is frozen, so everything the adapter's loss needs from it is a fixed function of the
text: the exit hidden states ``h_E`` (the adapter's input) and the full model's next-token
distribution (the target). Both are computed in one forward per window and stored in shards:

- ``hidden``   ``[n, seq_len, dim]`` bfloat16: ``h_E``;
- ``top_ids``  ``[n, seq_len, top_k]`` int32: the full model's ``top_k`` tokens per position;
- ``top_logp`` ``[n, seq_len, top_k]`` float32: their log-probabilities.

Each shard is written atomically (``shard_00012.safetensors``) with the sha256 of its token ids in
its metadata; an interrupted extraction resumes at the first missing shard, a shard whose windows
changed (the corpus file grew or was replaced) is recomputed, and under torchrun rank ``r``
computes shards ``r, r+W, ...``.
``features.json`` records what the features depend on; a mismatch refuses reuse.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from layerskip.errors import LayerskipError
from layerskip.model.decoder import LlamaForCausalLM

META_FILE = "features.json"


@dataclass(frozen=True)
class FeatureSpec:
    """Everything the stored features depend on."""

    base_fingerprint: str
    exit_layer: int
    seq_len: int
    top_k: int
    data: str  # the corpus specs and token budget

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def shard_path(directory: Path, index: int) -> Path:
    return directory / f"shard_{index:05d}.safetensors"


def check_or_write_meta(directory: Path, spec: FeatureSpec) -> None:
    """Write ``features.json`` or refuse a directory holding features of something else."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = directory / META_FILE
    if meta.exists():
        try:
            stored = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            stored = None
        if stored != spec.as_dict():
            raise LayerskipError(
                f"{directory} holds features of another base, exit layer or corpus ({meta}); "
                "use another `output_dir` or delete that directory"
            )
        return
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec.as_dict(), indent=2) + "\n")
    tmp.replace(meta)


@torch.no_grad()
def window_features(model: LlamaForCausalLM, windows: torch.Tensor, exit_layer: int, top_k: int) -> dict[str, torch.Tensor]:
    """windows ``[n, seq_len]`` token ids -> the shard tensors (see the module docstring)."""
    hidden = model.run_layers(model.embed(windows.to(model.device)), 0, exit_layer)
    final = model.run_layers(hidden, exit_layer, model.num_layers)
    logp = model.unembed(final).float().log_softmax(-1)
    top = logp.topk(top_k, dim=-1)
    return {
        "hidden": hidden.to("cpu", torch.bfloat16).contiguous(),
        "top_ids": top.indices.to("cpu", torch.int32).contiguous(),
        "top_logp": top.values.cpu().contiguous(),
    }


def extract_features(
    model: LlamaForCausalLM,
    windows: torch.Tensor,
    directory: Path,
    spec: FeatureSpec,
    shard_size: int,
    rank: int = 0,
    world_size: int = 1,
    micro_batch: int = 4,
    on_shard: Callable[[int], None] | None = None,
) -> int:
    """Compute the missing shards of ``windows`` ``[n, seq_len]`` owned by this rank; returns the shard count."""
    from safetensors.torch import save_file

    count = (windows.shape[0] + shard_size - 1) // shard_size
    for index in range(rank, count, world_size):
        path = shard_path(directory, index)
        rows = windows[index * shard_size : (index + 1) * shard_size]
        digest = windows_digest(rows)
        if shard_digest(path) != digest:  # missing, cut, or computed from other text: (re)compute it
            parts = [window_features(model, rows[i : i + micro_batch], spec.exit_layer, spec.top_k)
                     for i in range(0, rows.shape[0], micro_batch)]
            tensors = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
            tmp = path.with_suffix(".tmp")
            save_file(tensors, str(tmp), metadata={"windows": digest})
            tmp.replace(path)
        if on_shard:
            on_shard(1)
    return count


def windows_digest(rows: torch.Tensor) -> str:
    """sha256 of a shard's token ids ``[n, seq_len]``: ties stored features to the exact text they came from."""
    return hashlib.sha256(rows.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def shard_digest(path: Path) -> str | None:
    """The ``windows`` digest a shard was written with (None: missing or unreadable)."""
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("windows")
    except (SafetensorError, OSError):
        return None


def load_features(directory: Path, count: int) -> dict[str, torch.Tensor]:
    """All ``count`` shards concatenated along the window axis."""
    from safetensors.torch import load_file

    shards = []
    for index in range(count):
        path = shard_path(directory, index)
        if not path.exists():
            raise LayerskipError(f"missing feature shard {path}")
        shards.append(load_file(str(path)))
    return {key: torch.cat([s[key] for s in shards]) for key in shards[0]}
