"""What fits: positions against the model's ``max_position_embeddings`` and the KV cache against
the free memory of the device, checked before the cache is allocated, with one line saying what fits."""

from __future__ import annotations

from pathlib import Path

import torch

from layerskip.errors import LayerskipError
from layerskip.model.decoder import LlamaForCausalLM


def kv_cache_bytes(model: LlamaForCausalLM, positions: int, batch_size: int = 1) -> int:
    """Bytes of ``layerskip.model.cache.KVCache`` keys and values for ``positions`` slots."""
    c = model.config
    per_position = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * model.attention_dtype.itemsize
    return per_position * positions * batch_size


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device``: CUDA's free memory, else the host's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def check_fits(model: LlamaForCausalLM, prompt_tokens: int, max_steps: int, extra_slots: int = 0, batch_size: int = 1,
               steps_name: str = "`max_steps`") -> None:
    """One error line unless ``prompt_tokens + max_steps`` positions fit the model and the cache of
    ``prompt_tokens + max_steps + extra_slots`` slots (draft overshoot) fits the free memory;
    ``steps_name`` names the setting that sets ``max_steps``."""
    limit = model.config.context_limit
    total = prompt_tokens + max_steps
    if total > limit:
        room = limit - prompt_tokens
        fits = f"at most {steps_name} {room} fit" if room > 0 else "shorten the prompt"
        raise LayerskipError(f"the prompt ({prompt_tokens} tokens) + {steps_name} {max_steps} = {total} positions exceed "
                             f"the model's {'sliding_window' if limit < model.config.max_position_embeddings else 'max_position_embeddings'} "
                             f"{limit}: {fits}")
    need = kv_cache_bytes(model, total + extra_slots, batch_size)
    free = free_memory(model.device)
    if free is not None and need > free:
        per = kv_cache_bytes(model, 1, batch_size)
        raise LayerskipError(f"the KV cache for {total} positions needs {_gib(need)}, {_gib(free)} is free on "
                             f"{model.device}: at most {free // per - extra_slots} positions fit")
