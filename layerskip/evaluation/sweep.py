"""The sweep's grid and its result files: one CSV row per grid point (exit layer x number of
speculations), rewritten after every point so an interrupted sweep leaves every finished point on
disk, and the best point as JSON."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from layerskip.errors import LayerskipError
from layerskip.decoding.strategy import Strategy

CSV_FIELDS = ["exit_layer", "num_speculations", "tokens_per_second", "tokens_per_second_std", "speedup",
              "acceptance_rate", "mean_tokens_per_verification", "time_per_token", "rougeL", "samples"]


def grid(first: int, last: int, step: int, what: str) -> list[int]:
    """``first..last`` (inclusive) by ``step``; an empty range is one error line naming ``what``."""
    if step < 1 or last < first:
        raise LayerskipError(f"empty {what} range {first}..{last} step {step}")
    return list(range(first, last + 1, step))


def point_row(spec: Strategy, result: Mapping[str, Any]) -> dict[str, Any]:
    """The CSV row of one grid point from its aggregate (``layerskip.evaluation.runner.aggregate``)."""
    speed = result["speed"]
    return {"exit_layer": spec.exit_layer, "num_speculations": spec.num_speculations,
            "tokens_per_second": speed["tokens_per_second"]["mean"], "tokens_per_second_std": speed["tokens_per_second"]["std"],
            "speedup": result.get("speedup"), "acceptance_rate": speed["acceptance_rate"]["mean"],
            "mean_tokens_per_verification": speed["mean_tokens_per_verification"]["mean"],
            "time_per_token": speed["time_per_token"]["mean"],
            "rougeL": result["quality"].get("rougeL", {}).get("mean"), "samples": result["samples"]}


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """All finished points, replacing the file atomically (a crash leaves the previous version)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def best_point(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The row with the highest mean tokens/s."""
    return max(rows, key=lambda r: r["tokens_per_second"] or 0)


def write_best(path: Path, best: Mapping[str, Any], baseline_tps: float, context: Mapping[str, Any]) -> None:
    keys = ("exit_layer", "num_speculations", "tokens_per_second", "speedup", "acceptance_rate")
    document = {**{k: best[k] for k in keys}, "autoregressive_tokens_per_second": baseline_tps, **context}
    path.write_text(json.dumps(document, indent=2) + "\n")
