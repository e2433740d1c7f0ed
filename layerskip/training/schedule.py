"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_ratio * peak``."""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, peak: float, warmup: int, min_ratio: float = 0.1) -> float:
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
