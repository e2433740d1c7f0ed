"""Fingerprints of runs: everything that determines their records, so a resumed run continues
only the very run it claims to, and differences can be named in one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from layerskip.checkpoints.loading import RECOMMENDED_FILE

HEAD_BYTES = 1 << 20


def normalized(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, other objects strings)."""
    return json.loads(json.dumps(value, default=str))


def _file_digest(path: Path) -> str:
    """sha256 of a file's size, first and last MiB: cheap on multi-GB weights, and any re-saved,
    re-quantized or retrained checkpoint changes its safetensors header or data there."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(HEAD_BYTES))
        if size > HEAD_BYTES:
            handle.seek(max(HEAD_BYTES, size - HEAD_BYTES))
            digest.update(handle.read())
    return digest.hexdigest()


def model_identity(path: Path) -> dict[str, Any]:
    """The checkpoint's config and weight files (names and digests), not where it lies."""
    files = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" or p.name in ("config.json", RECOMMENDED_FILE))
    return {p.name: _file_digest(p) for p in files}


def digest(items: Iterable[Any]) -> str:
    """sha256 of a sequence of JSON-able items (e.g. the samples a run covers)."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
    """The keys whose values differ, as ``key: old -> new`` (at most ``limit``), or ''."""
    a, b = _flat(normalized(old)), _flat(normalized(new))
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

    def short(v: Any) -> str:
        text = json.dumps(v)
        return text if len(text) <= 24 else text[:21] + "..."

    parts = [f"{k}: {short(a.get(k))} -> {short(b.get(k))}" for k in changed[:limit]]
    if len(changed) > limit:
        parts.append(f"and {len(changed) - limit} more")
    return "; ".join(parts)


def run_fingerprint(model_path: Path, model: Any, samples: Iterable[Any], labels: list[str], generation: Any,
                    code_execution: bool = False, batch_size: int = 1) -> dict[str, Any]:
    """Everything that determines a run's records (model files, samples, strategies, generation
    settings, dtype, device, code execution, rows decoded together): a resumed run must match it exactly."""
    from dataclasses import asdict

    samples = list(samples)
    return normalized({
        "model": model_identity(model_path),
        "samples": digest((s.id, s.prompt, s.reference) for s in samples),
        "num_samples": len(samples),
        "strategies": labels,
        "generation": asdict(generation),
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": model.device.type,
        "code_execution": code_execution,
        **({"batch_size": batch_size} if batch_size != 1 else {}),
    })
