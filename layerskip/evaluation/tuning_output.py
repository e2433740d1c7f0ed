"""The files ``layerskip tune`` writes: the tuned draft configuration (usable as ``--draft_config``)
and, on request, the checkpoint's recommended setting (``layerskip.json`` beside its weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from layerskip.drafters.config import DraftConfig
from layerskip.errors import LayerskipError, read_json_object
from layerskip.checkpoints.loading import RECOMMENDED_FILE
from layerskip.files.storage import atomic_write


def write_tuned(path: Path, best: DraftConfig, measured: dict[str, Any], history: list[Any]) -> None:
    """``{"draft": ..., "measured": ..., "history": ...}``; ``draft`` is what ``--draft_config`` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"draft": best.to_dict(), "measured": measured, "history": history}, indent=2) + "\n")


def save_recommendation(model_dir: Path, draft: DraftConfig) -> Path:
    """Store ``draft`` as the checkpoint's recommended setting, keeping the file's other keys."""
    path = model_dir / RECOMMENDED_FILE
    data = read_json_object(path, f"corrupt {path}", f"missing {path}") if path.exists() else {}
    data["recommended"] = draft.to_dict()
    try:
        atomic_write(path, json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise LayerskipError(f"cannot write {path}: {exc.strerror}") from None
    return path
