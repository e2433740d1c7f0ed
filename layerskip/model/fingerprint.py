"""The fingerprint of a checkpoint's weights, which trained add-ons (draft adapters, their features)
record so they are never used with another base.

It is taken from the model as loaded, before ``layerskip.kernels.linear.prepare_for_inference`` fuses
or quantizes its projections (that function computes it first and the value is cached on the
model), so a prepared and an unprepared load of one checkpoint share it.
"""

from __future__ import annotations

import hashlib
import json

import torch

from layerskip.model.decoder import LlamaForCausalLM

FINGERPRINT_SAMPLES = 4096


def base_fingerprint(model: LlamaForCausalLM) -> str:
    """A short hash of the model's config and weights, independent of the dtype it is loaded in.

    Every parameter contributes its name, shape and ``FINGERPRINT_SAMPLES`` evenly spaced values
    rounded to bfloat16 (so float32 and bfloat16 loads of one checkpoint agree).
    """
    cached = getattr(model, "_layerskip_fingerprint", None)
    if cached is not None:
        return cached
    digest = hashlib.sha256(json.dumps(model.config.to_hf_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            flat = param.detach().reshape(-1)
            step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
            sample = flat[::step][:FINGERPRINT_SAMPLES].to("cpu", torch.bfloat16).view(torch.int16)
            digest.update(f"{name}{tuple(param.shape)}".encode())
            digest.update(sample.numpy().tobytes())
    model._layerskip_fingerprint = value = digest.hexdigest()[:16]
    return value
