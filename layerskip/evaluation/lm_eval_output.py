"""``layerskip eval``'s output in lm-evaluation-harness' own format, plus layerskip's speed block.

lm-eval's ``EvaluationTracker`` writes ``OUTPUT_PATH/<model>/results_<time>.json`` (results,
``configs``, ``versions``, ``higher_is_better``, ``n-shot``, ``config`` and the tracker's fields) and,
with ``--log_samples``, one ``samples_<task>_<time>.jsonl`` per task. The same results document
carries a ``layerskip`` block: the strategy, draft, speed of the generation requests and environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tracker(output_path: str):
    from lm_eval.loggers import EvaluationTracker

    return EvaluationTracker(output_path=output_path)


def save(evaluation_tracker: Any, results: dict[str, Any], layerskip: dict[str, Any]) -> list[Path]:
    """Write the results (with ``layerskip``) and, when present, the samples; the files written."""
    samples = results.pop("samples", None)
    results["layerskip"] = layerskip
    evaluation_tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results.get("configs", {}) if samples else []:
        if task_name in samples:
            evaluation_tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    output = Path(evaluation_tracker.output_path)
    folder = output.parent if output.suffix == ".json" else output / str(evaluation_tracker.general_config_tracker.model_name_sanitized)
    date_id = getattr(evaluation_tracker, "date_id", "")
    return sorted(p for p in folder.glob(f"*{date_id}*") if p.is_file()) if date_id else []


def tables(results: dict[str, Any]) -> str:
    """lm-eval's summary table (and its groups table when there are groups)."""
    from lm_eval.utils import make_table

    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text


def speed_line(speed: dict[str, Any]) -> str | None:
    """One line on the speed of the generation requests (None when there were none)."""
    if not speed.get("generation_requests"):
        return None
    acc = "n/a" if speed.get("acceptance_rate") is None else f"{speed['acceptance_rate']:.3f}"
    return (f"generation: {speed['tokens_per_second']:.1f} tok/s, acceptance {acc} over "
            f"{speed['generation_requests']} requests (log-likelihood requests gain no speed-up)")
