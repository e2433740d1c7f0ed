"""Per-category results of a run over a dataset with categories (Spec-Bench): for each drafting strategy
against its engine's autoregressive run, per category and overall, the speed-up (all tokens over all
decoding time, Spec-Bench's measure), tokens/s of both, acceptance, mean tokens per verification (the
verifier's own token included) and the share of questions slower than ``SLOW`` x; a Markdown table and a
bar chart of the speed-ups."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from layerskip.decoding.strategy import Strategy
from layerskip.evaluation.records import group

#: a question whose speed-up is below this counts as slower
SLOW = 0.9
OVERALL = "overall"


def _rate(rows: Sequence[Mapping[str, Any]]) -> float | None:
    tokens = sum(r["speed"].get("generated_tokens") or 0 for r in rows)
    seconds = sum(r["speed"].get("total_time") or 0.0 for r in rows)
    return tokens / seconds if seconds else None


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [r["speed"].get(key) for r in rows if r["speed"].get(key) is not None]
    return statistics.fmean(values) if values else None


def category_results(records: Sequence[Mapping[str, Any]], specs: Sequence[Strategy]) -> dict[str, dict[str, Any]]:
    """strategy label -> category (and ``overall``) -> figures, for every strategy whose baseline ran too."""
    by_strategy = group(records, "strategy")
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        base_label = spec.baseline().label
        if spec.label == base_label or base_label not in by_strategy or spec.label not in by_strategy:
            continue
        base = {r["sample_id"]: r for r in by_strategy[base_label]}
        mine = [r for r in by_strategy[spec.label] if r["sample_id"] in base]
        categories = sorted({r.get("category") or OVERALL for r in mine} - {OVERALL})
        table: dict[str, Any] = {}
        for category in [*categories, OVERALL]:
            rows = [r for r in mine if category == OVERALL or r.get("category") == category]
            base_rows = [base[r["sample_id"]] for r in rows]
            rate, base_rate = _rate(rows), _rate(base_rows)
            per_question = [r["speed"]["tokens_per_second"] / b["speed"]["tokens_per_second"] for r, b in zip(rows, base_rows)
                            if r["speed"].get("tokens_per_second") and b["speed"].get("tokens_per_second")]
            table[category] = {
                "questions": len(rows),
                "tokens_per_second": rate,
                "baseline_tokens_per_second": base_rate,
                "speedup": rate / base_rate if rate and base_rate else None,
                "acceptance_rate": _mean(rows, "acceptance_rate"),
                "mean_tokens_per_verification": _mean(rows, "mean_tokens_per_verification"),
                "slower_share": sum(q < SLOW for q in per_question) / len(per_question) if per_question else None,
                "slowest": min(per_question) if per_question else None,
            }
        out[spec.label] = table
    return out


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def category_table(label: str, table: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of one strategy's per-category figures."""
    lines = [f"{label} vs autoregressive", "",
             "| category | questions | speed-up | tok/s | AR tok/s | accept | tok/verif | below 0.9x | slowest |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for category, row in table.items():
        name = f"**{category}**" if category == OVERALL else category
        lines.append(f"| {name} | {row['questions']} | {_cell(row['speedup'], '.2f')}x | {_cell(row['tokens_per_second'], '.1f')} | "
                     f"{_cell(row['baseline_tokens_per_second'], '.1f')} | {_cell(row['acceptance_rate'], '.3f')} | "
                     f"{_cell(row['mean_tokens_per_verification'], '.2f')} | "
                     f"{_cell(None if row['slower_share'] is None else 100 * row['slower_share'], '.0f')}% | "
                     f"{_cell(row['slowest'], '.2f')}x |")
    return "\n".join(lines)


def legend_labels(labels: Sequence[str]) -> list[str]:
    """Short legend entries for strategy labels (``name:key=value,key=value``): the settings shared by every
    label that has settings are dropped, so variants that differ in one setting read apart (``self_speculative:
    draft_adapter=B`` rather than the same 60 leading characters twice)."""
    def parts(label: str) -> tuple[str, list[str]]:
        """``[hf:]NAME`` and its ``key=value`` settings (``Strategy.label``'s form; a value may hold ':')."""
        first = label.find("=")
        if first < 0:
            return label, []
        cut = label.rfind(":", 0, first)
        if cut < 0:
            return label, []
        return label[:cut], [p for p in label[cut + 1:].split(",") if p]

    split = [parts(label) for label in labels]
    with_settings = [set(p) for _, p in split if p]
    shared = set.intersection(*with_settings) if len(with_settings) > 1 else set()
    out = []
    for label, (name, settings) in zip(labels, split):
        kept = [p for p in settings if p not in shared]
        out.append(f"{name}:{','.join(kept)}" if kept else label)
    return out


def category_chart(results: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path, title: str) -> None:
    """A bar chart PNG of each strategy's per-category speed-ups (a line at 1x: autoregressive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    categories = list(next(iter(results.values())))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(categories) * max(1, len(labels)) + 2), 4.5))
    width = 0.8 / len(labels)
    for i, (label, legend) in enumerate(zip(labels, legend_labels(labels))):
        values = [results[label][c]["speedup"] or 0.0 for c in categories]
        bars = ax.bar([x + i * width for x in range(len(categories))], values, width, label=legend[:80])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(categories))], categories, rotation=30, ha="right")
    ax.set_ylabel("speed-up over autoregressive")
    ax.set_title(title, fontsize=9)
    if len(labels) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
