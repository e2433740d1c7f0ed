"""Checks of user input at the boundary: each bad value is one ``LayerskipError`` line naming it,
raised before any expensive work (loading, generation, training).

Numbers read from JSON or flags: integers must be integers (``true``, ``2.7``, ``"two"`` and
``null`` are refused; ``2.0`` is read as 2), floats must be finite numbers. Output locations are
tried for writing before the work that fills them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
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


@dataclasses.dataclass(frozen=True)
class FieldType:
    """A dataclass field's annotation read as a value kind: ``base`` one of ``int``, ``float``, ``bool``,
    ``str``, ``tuple`` (of ints), and whether ``None`` is allowed."""

    base: type
    optional: bool


def field_types(cls: type) -> dict[str, FieldType]:
    """The fields of the dataclass ``cls`` by name, their annotations resolved (``typing.get_type_hints``)."""
    kinds = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint)
        optional = type(None) in args
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in args if a is not type(None))
        kinds[name] = FieldType(typing.get_origin(hint) or hint, optional)
    return {f.name: kinds[f.name] for f in dataclasses.fields(cls)}


def check_fields(cls: type, values: dict[str, Any], source: str) -> None:
    """JSON values for the dataclass ``cls``: each by its annotation (``int``, ``float``, ``str``,
    ``bool``, ``tuple[int, ...]``, optionally ``| None``), one error line naming ``source`` and the key."""
    kinds = field_types(cls)
    for key, value in values.items():
        kind = kinds.get(key)
        if kind is None or (value is None and kind.optional):
            continue
        name = f"{source}: {key}"
        if kind.base is tuple:
            if not isinstance(value, (list, tuple)):
                raise LayerskipError(f"{name} must be a list of integers, got {value!r}")
            for item in value:
                as_int(item, name)
        elif kind.base is int:
            as_int(value, name)
        elif kind.base is float:
            as_float(value, name)
        elif kind.base is bool and not isinstance(value, bool):
            raise LayerskipError(f"{name} must be true or false, got {value!r}")
        elif kind.base is str and not isinstance(value, str):
            raise LayerskipError(f"{name} must be a string, got {value!r}")


#: Integer fields of a Hugging Face config.json and their ranges (generous: far beyond any real model).
MODEL_CONFIG_INTS = {"vocab_size": (1, 1 << 22), "hidden_size": (1, 1 << 17), "intermediate_size": (1, 1 << 19),
                     "num_hidden_layers": (1, 1024), "num_attention_heads": (1, 1024), "num_key_value_heads": (1, 1024),
                     "head_dim": (1, 1 << 12), "max_position_embeddings": (1, 1 << 24)}
MODEL_CONFIG_FLOATS = {"rms_norm_eps": (0.0, 1.0), "rope_theta": (1e-6, None)}


def check_model_config(raw: dict[str, Any], source: str) -> None:
    """Types and ranges of the fields of ``config.json`` that size the model, before any allocation."""
    for key, (low, high) in MODEL_CONFIG_INTS.items():
        if key in raw and not (raw[key] is None and key in ("num_key_value_heads", "head_dim")):  # null: derived
            as_int(raw[key], f"{source}: {key}", low, high)
    for key, (low, high) in MODEL_CONFIG_FLOATS.items():
        if raw.get(key) is not None:
            as_float(raw[key], f"{source}: {key}", low, high)
    heads, kv = raw.get("num_attention_heads"), raw.get("num_key_value_heads")
    if heads and kv and heads % kv:
        raise LayerskipError(f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    eos = raw.get("eos_token_id")
    for item in eos if isinstance(eos, list) else ([] if eos is None else [eos]):
        as_int(item, f"{source}: eos_token_id", 0)


def inside(root: Path, name: Any, source: str) -> Path:
    """``root / name`` for a file name read from ``source``, refused unless it stays inside ``root``."""
    if not isinstance(name, str) or not name:
        raise LayerskipError(f"{source}: expected a file name, got {name!r}")
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise LayerskipError(f"{source}: {name!r} lies outside {root}")
    return path
