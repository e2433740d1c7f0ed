"""Checks of user input at the boundary: each bad value is one ``LayerskipError`` line naming it,
raised before any expensive work (loading, generation, training).

Numbers read from JSON or flags: integers must be integers (``true``, ``2.7``, ``"two"`` and
``null`` are refused; ``2.0`` is read as 2), floats must be finite numbers. Output locations are
tried for writing before the work that fills them.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from layerskip.errors import LayerskipError


def as_int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an integer in ``[low, high]``, else one error line naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise LayerskipError(f"{name} must be an integer, got {value!r}")
    number = int(value)
    _check_range(number, name, low, high)
    return number


def as_float(value: Any, name: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float in ``[low, high]``, else one error line naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LayerskipError(f"{name} must be a finite number, got {value!r}")
    number = float(value)
    _check_range(number, name, low, high)
    return number


def _check_range(number: float, name: str, low: float | None, high: float | None) -> None:
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"in [{low}, {high}]")
        raise LayerskipError(f"{name} must be {bounds}, got {number}")


def writable_dir(path: str | Path, name: str) -> Path:
    """``path`` as a directory this process can write into (created if missing)."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise LayerskipError(f"{name} {path}: exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise LayerskipError(f"{name} {path}: not writable ({exc.strerror or exc})") from None
    return directory


def writable_file(path: str | Path, name: str) -> Path:
    """``path`` as a file this process can create or append to (its directory created if missing)."""
    file = Path(path)
    if file.is_dir():
        raise LayerskipError(f"{name} {path}: is a directory")
    writable_dir(file.parent, name)
    if file.exists() and not os.access(file, os.W_OK):
        raise LayerskipError(f"{name} {path}: not writable")
    return file


#: Integer flags of the generation/dataset argument groups and their lower bounds (None: any).
GENERATION_INTS = {"max_steps": 1, "top_k": 0, "no_repeat_ngram_size": 0, "n_shot": 0, "num_samples": 1,
                   "criteria_patience": 1}
#: Float flags and their ranges.
GENERATION_FLOATS = {"temperature": (0.0, None), "top_p": (0.0, 1.0), "criteria_threshold": (None, None),
                     "criteria_temperature": (0.0, None), "criteria_high": (0.0, 1.0), "criteria_low": (0.0, 1.0),
                     "layer_skip_proportion": (0.0, 1.0), "confidence_threshold": (0.0, 1.0)}


def check_arguments(args: argparse.Namespace) -> None:
    """What every command checks first: text flags are valid UTF-8; the numeric generation flags
    present in ``args`` are in range and finite; exit layer and k are >= 1, or -1 (upstream's
    spelling of "unset": the model's recommendation)."""
    for key, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise LayerskipError(f"--{key}: not valid UTF-8") from None
    for key, low in GENERATION_INTS.items():
        if getattr(args, key, None) is not None:
            as_int(getattr(args, key), f"--{key}", low)
    for key, (low, high) in GENERATION_FLOATS.items():
        if getattr(args, key, None) is not None:
            as_float(getattr(args, key), f"--{key}", low, high)
    for key in ("exit_layer", "num_speculations"):
        value = getattr(args, key, None)
        if value is not None and value != -1 and value < 1:
            raise LayerskipError(f"--{key} must be >= 1 (or -1: unset, the model's recommendation), got {value}")
    for value in getattr(args, "stop_token_ids", None) or []:
        as_int(value, "--stop_token_ids", 0)
