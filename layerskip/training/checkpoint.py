"""Saving models in Hugging Face layout, and crash-safe checkpoints of training state for exact resumption.

Model weights are written as safetensors; the optimizer state goes through ``torch.save`` and is
read back with ``weights_only=True`` (tensors and plain containers only, no arbitrary pickle).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from layerskip.errors import LayerskipError
from layerskip.checkpoints.loading import RECOMMENDED_FILE
from layerskip.model.decoder import LlamaForCausalLM
from layerskip.files.storage import atomic_write, fsync_path



def changed_settings(stored: dict[str, Any], current: dict[str, Any], free: set[str] | frozenset[str],
                     paths: set[str] | frozenset[str], defaults: dict[str, Any] | None = None) -> list[str]:
    """The settings of ``current`` that differ from a stored run's, ignoring ``free`` ones (those a
    resumed run may change). ``paths`` that exist are compared as locations (``corp``, ``./corp/``
    and its absolute spelling are one directory); a key the stored run lacks counts as ``defaults[key]``."""
    defaults = defaults or {}

    def location(value: Any) -> Any:
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            return str(Path(value).expanduser().resolve())
        return value

    changed = []
    for key, value in current.items():
        if key in free:
            continue
        old = stored.get(key, defaults.get(key))
        if key in paths:
            old, value = location(old), location(value)
        if old != value:
            changed.append(key)
    return sorted(changed)


def model_tensors(model: LlamaForCausalLM, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates, contiguous, optionally cast."""
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return {k: (v.to(dtype) if dtype is not None else v).contiguous().clone() for k, v in state.items()}


def save_pretrained(model: LlamaForCausalLM, directory: Path, tokenizer=None, dtype: torch.dtype = torch.float32, extra: dict | None = None) -> None:
    """config.json + model.safetensors (+ tokenizer files): loadable by transformers' AutoModelForCausalLM."""
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_hf_dict()
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    atomic_write(directory / "config.json", json.dumps(config, indent=2) + "\n")
    tmp = directory / "model.safetensors.tmp"
    save_file(model_tensors(model, dtype), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    if extra is not None:
        atomic_write(directory / RECOMMENDED_FILE, json.dumps(extra, indent=2) + "\n")


# ---- crash-safe checkpoints ----------------------------------------------------------------------
#
# A checkpoint is a directory: WEIGHTS (safetensors), STATE (torch.save of tensors and plain
# containers, read back with weights_only=True) and MARKER, written last, which lists the other
# files with their sizes and holds the JSON ``meta`` (its "step" orders checkpoints). The protocol:
#
#   1. write everything into ``NAME.tmp`` (any leftover removed first), fsync each file, MARKER last;
#   2. move the current ``NAME`` (if complete) to ``NAME.old``, any leftover ``NAME.old`` removed first;
#   3. rename ``NAME.tmp`` to ``NAME`` and fsync the parent directory;
#   4. remove ``NAME.old``.
#
# A crash anywhere leaves at least one complete checkpoint among NAME, NAME.old and NAME.tmp (after
# the first save). ``recover`` keeps the complete one with the highest step as ``NAME`` and removes
# the rest, so later saves start from a clean state.

WEIGHTS, STATE, MARKER = "model.safetensors", "state.pt", "complete.json"


@dataclass
class Checkpoint:
    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def tensors(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / WEIGHTS))

    def state(self) -> dict[str, Any]:
        """What was saved as ``state`` ({} when nothing was)."""
        file = self.path / STATE
        return torch.load(file, weights_only=True) if file.exists() else {}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], state: dict[str, Any] | None = None) -> None:
    """Write a checkpoint to ``directory`` by the crash-safe protocol above.

    ``tensors``: name -> tensor (safetensors); ``meta``: JSON-able, with an integer ``"step"``;
    ``state``: optional tensors and plain containers (e.g. an optimizer's state dict).
    """
    directory = Path(os.path.normpath(directory))
    tmp, old = _sibling(directory, ".tmp"), _sibling(directory, ".old")
    _remove(tmp)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    if state is not None:
        torch.save(state, tmp / STATE)
    files = {f.name: f.stat().st_size for f in tmp.iterdir()}
    for name in files:
        fsync_path(tmp / name)
    (tmp / MARKER).write_text(json.dumps({"meta": {**meta, "step": int(meta["step"])}, "files": files}))
    fsync_path(tmp / MARKER)
    fsync_path(tmp)
    _remove(old)
    if _read(directory) is not None:
        os.replace(directory, old)
    else:
        _remove(directory)
    os.replace(tmp, directory)
    fsync_path(directory.parent)
    _remove(old)


def _read(directory: Path) -> Checkpoint | None:
    """The checkpoint in ``directory`` if it is complete (its marker and every file it lists)."""
    try:
        marker = json.loads((directory / MARKER).read_text())
        complete = all((directory / name).stat().st_size == size for name, size in marker["files"].items())
        return Checkpoint(directory, marker["meta"]) if complete and isinstance(marker["meta"]["step"], int) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def recover(directory: Path) -> Checkpoint | None:
    """After a crash at any point of ``save_checkpoint``: the latest complete checkpoint, moved to
    ``directory``, with the leftovers removed (None when there is none)."""
    directory = Path(os.path.normpath(directory))
    candidates = [directory, _sibling(directory, ".old"), _sibling(directory, ".tmp")]
    complete = [c for c in map(_read, candidates) if c is not None]
    best = max(complete, key=lambda c: c.step, default=None)
    if best is not None and best.path != directory:
        _remove(directory)
        os.replace(best.path, directory)
        fsync_path(directory.parent)
        best = Checkpoint(directory, best.meta)
    for leftover in candidates[1:]:
        _remove(leftover)
    if best is None and directory.exists():
        raise LayerskipError(f"{directory} holds no complete checkpoint (damaged, or written by an older layerskip); "
                             "move it away to start afresh")
    return best


def save_training_state(directory: Path, model: LlamaForCausalLM, optimizer: torch.optim.Optimizer, step: int, extra: dict[str, Any]) -> None:
    """The fp32 master weights and the optimizer state at ``step``, by ``save_checkpoint``."""
    save_checkpoint(directory, model_tensors(model), {"step": step, **extra}, {"optimizer": optimizer.state_dict()})


def load_training_state(checkpoint: Checkpoint, model: LlamaForCausalLM, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Fill ``model`` and ``optimizer`` from ``checkpoint``; its meta (``step`` and the ``extra``)."""
    weights = checkpoint.tensors()
    if model.config.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    model.load_state_dict(weights, strict=True)
    optimizer.load_state_dict(checkpoint.state()["optimizer"])
    return checkpoint.meta
