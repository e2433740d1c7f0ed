"""Saving models in Hugging Face layout and training state for exact resumption.

Model weights are written as safetensors; the optimizer state goes through ``torch.save`` and is
read back with ``weights_only=True`` (tensors and plain containers only, no arbitrary pickle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from layerskip.model import LlamaForCausalLM

RECOMMENDED_FILE = "layerskip.json"


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


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_training_state(directory: Path, model: LlamaForCausalLM, optimizer: torch.optim.Optimizer, step: int, extra: dict[str, Any]) -> None:
    """``directory/model.safetensors`` (fp32 master weights) + ``directory/state.pt``, written atomically."""
    tmp_dir = directory.with_name(directory.name + ".tmp")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    save_file(model_tensors(model), str(tmp_dir / "model.safetensors"), metadata={"format": "pt"})
    torch.save({"step": step, "optimizer": optimizer.state_dict(), **extra}, tmp_dir / "state.pt")
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        os.replace(directory, old)
        os.replace(tmp_dir, directory)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp_dir, directory)


def load_training_state(directory: Path, model: LlamaForCausalLM, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    weights = load_file(str(directory / "model.safetensors"))
    if model.config.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    model.load_state_dict(weights, strict=True)
    state = torch.load(directory / "state.pt", weights_only=True)
    optimizer.load_state_dict(state.pop("optimizer"))
    return state
