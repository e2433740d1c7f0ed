"""What every command checks first, before any work: the flags' values as the parser read them."""

from __future__ import annotations

import argparse

from layerskip.errors import LayerskipError
from layerskip.validation import as_float, as_int

#: Integer flags of the generation/dataset argument groups and their lower bounds (ranges checked
#: downstream, e.g. by SamplingConfig or the draft validation, are not repeated here).
GENERATION_INTS = {"max_steps": 1, "n_shot": 0, "num_samples": 1, "seed": 0}
MIN_TEMPERATURE = 1e-4
#: Float flags and their ranges (as above).
GENERATION_FLOATS = {"criteria_temperature": (0.0, None), "criteria_high": (0.0, 1.0), "criteria_low": (0.0, 1.0)}


def check_arguments(args: argparse.Namespace) -> None:
    """What every command checks first: text flags are valid UTF-8, float flags finite; the numeric
    generation flags present in ``args`` are in range; exit layer and k are >= 1, or -1 (upstream's
    spelling of "unset": the model's recommendation)."""
    for key, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise LayerskipError(f"--{key}: not valid UTF-8") from None
        if isinstance(value, float):
            as_float(value, f"--{key}")
    for key, low in GENERATION_INTS.items():
        if getattr(args, key, None) is not None:
            as_int(getattr(args, key), f"--{key}", low)
    for key, (low, high) in GENERATION_FLOATS.items():
        if getattr(args, key, None) is not None:
            as_float(getattr(args, key), f"--{key}", low, high)
    for key in ("temperature", "criteria_temperature"):
        value = getattr(args, key, None)
        if value is not None and 0 < value < MIN_TEMPERATURE:  # logits / T overflow: denormals and the like
            raise LayerskipError(f"--{key} {value} is too small to divide logits by (use >= {MIN_TEMPERATURE}, "
                                 "or --sample False for greedy decoding)")
    for key in ("exit_layer", "num_speculations"):
        value = getattr(args, key, None)
        if value is not None and value != -1 and value < 1:
            raise LayerskipError(f"--{key} must be >= 1 (or -1: unset, the model's recommendation), got {value}")
    for value in getattr(args, "stop_token_ids", None) or []:
        as_int(value, "--stop_token_ids", 0)
