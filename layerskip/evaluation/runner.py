"""Run strategies over samples, interleaved, writing one record per (sample, strategy) as it finishes."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from tqdm import tqdm

from layerskip.evaluation.datasets import Sample
from layerskip.evaluation.execution import run_tests, truncate_completion
from layerskip.evaluation.metrics import summarize, text_metrics
from layerskip.evaluation.records import SampleLog, group
from layerskip.evaluation.engines import Output
from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.strategy import Strategy

SPEED_KEYS = ("acceptance_rate", "mean_tokens_per_verification", "time_to_first_token", "total_time",
              "time_per_token", "tokens_per_second", "generated_tokens", "mean_exit_layer",
              "lookup_rounds", "lookup_drafted_tokens", "lookup_accepted_tokens", "batch_tokens_per_second")
QUALITY_KEYS = ("rouge1", "rouge2", "rouge3", "rougeL", "bleu", "exact_match", "edit_distance", "pass@1")

Engine = Any  # LayerskipEngine | TransformersEngine: run(spec, prompt_ids, config) -> Output
#: the prompt ids of the next answer after user turns and the model's answers to all but the last
TurnEncoder = Callable[[Sequence[str], Sequence[str]], list[int]]
#: counts that add up over the turns of a conversation
SUMMED = ("generated_tokens", "drafted_tokens", "accepted_tokens", "draft_forwards", "verify_forwards", "total_time",
          "lookup_rounds", "lookup_drafted_tokens", "lookup_accepted_tokens")


def merge_turns(outputs: Sequence[Output]) -> Output:
    """One conversation's outputs as one: token ids and answers in order, counts summed, rates recomputed
    over all turns (tokens/s = all tokens / all decoding time; tokens per verification and acceptance
    likewise), time to first token of the first turn."""
    if len(outputs) == 1:
        return outputs[0]
    stats = dict(outputs[-1].stats)
    for key in SUMMED:
        values = [o.stats.get(key) for o in outputs]
        stats[key] = None if any(v is None for v in values) else sum(values)
    stats["time_to_first_token"] = outputs[0].stats.get("time_to_first_token")
    tokens, seconds = stats["generated_tokens"], stats["total_time"]
    stats["tokens_per_second"] = tokens / seconds if seconds else 0.0
    stats["time_per_token"] = seconds / max(tokens, 1)
    drafted, verified = stats.get("drafted_tokens"), stats.get("verify_forwards")
    stats["acceptance_rate"] = stats["accepted_tokens"] / drafted if drafted else None
    stats["mean_tokens_per_verification"] = (tokens - len(outputs)) / verified if verified else None
    exits = [(o.stats.get("mean_exit_layer"), o.stats.get("drafted_tokens") or 0) for o in outputs]
    weight = sum(n for m, n in exits if m is not None)
    stats["mean_exit_layer"] = sum(m * n for m, n in exits if m is not None) / weight if weight else None
    ids = [t for o in outputs for t in o.token_ids]
    return Output(ids, "\n\n".join(o.text for o in outputs), stats)


def run_sample(engine: Engine, spec: Strategy, sample: Sample, encode: TurnEncoder,
               config: GenerationConfig) -> tuple[Output, int]:
    """Decode every turn of ``sample`` with ``spec``, each later turn after this strategy's own answers
    (Spec-Bench's multi-turn protocol): the merged output and the first turn's prompt length."""
    outputs: list[Output] = []
    first = 0
    for i in range(len(sample.turns)):
        ids = encode(sample.turns[: i + 1], [o.text for o in outputs])
        first = first or len(ids)
        outputs.append(engine.run(spec, ids, config))
    return merge_turns(outputs), first


def run_samples(engine: Engine, spec: Strategy, samples: Sequence[Sample], encode: TurnEncoder,
                config: GenerationConfig) -> list[tuple[Output, int]]:
    """``run_sample`` for several samples decoded together (``engine.run_many``): each turn of every
    sample that has it in one batch, later turns after each sample's own answers."""
    if not hasattr(engine, "run_many"):
        return [run_sample(engine, spec, sample, encode, config) for sample in samples]
    outputs: list[list[Output]] = [[] for _ in samples]
    firsts = [0] * len(samples)
    for turn in range(max(len(s.turns) for s in samples)):
        active = [i for i, s in enumerate(samples) if len(s.turns) > turn]
        ids = [encode(samples[i].turns[: turn + 1], [o.text for o in outputs[i]]) for i in active]
        for i, prompt in zip(active, ids):
            firsts[i] = firsts[i] or len(prompt)
        for i, out in zip(active, engine.run_many(spec, ids, config)):
            outputs[i].append(out)
    return [(merge_turns(o), first) for o, first in zip(outputs, firsts)]


def sample_record(sample: Sample, spec: Strategy, out: Output, prompt_len: int, execute: bool, rank: int) -> dict[str, Any]:
    metrics: dict[str, Any] = text_metrics(out.text, sample.reference)
    record: dict[str, Any] = {
        "sample_id": sample.id,
        "strategy": spec.label,
        "engine": spec.engine,
        "prompt_tokens": prompt_len,
        "prediction": out.text,
        "reference": sample.reference,
        "token_ids": out.token_ids,
        "metrics": metrics,
        "speed": {k: out.stats.get(k) for k in SPEED_KEYS},
        "rank": rank,
    }
    if sample.category is not None:
        record["category"] = sample.category
    if execute and "problem" in sample.extra:
        result = run_tests(sample.extra["problem"], truncate_completion(out.text))
        metrics["pass@1"] = float(result["passed"])
        record["execution"] = result["result"]
    return record


def run_interleaved(
    samples: Sequence[Sample],
    specs: Sequence[Strategy],
    engines: Mapping[str, Engine],
    encode: TurnEncoder,
    config: GenerationConfig,
    log: SampleLog,
    done: set[tuple[str, str]] = frozenset(),
    execute: bool = False,
    rank: int = 0,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    batch_size: int = 1,
) -> list[dict[str, Any]]:
    """For each sample (or each group of ``batch_size`` samples, decoded together), every strategy in turn
    (so drift in machine speed hits all alike).

    One short warm-up generation per strategy runs first and is not recorded.
    """
    records = []
    todo = [s for s in samples if any((s.id, spec.label) not in done for spec in specs)]
    if todo:
        warm_ids = encode([todo[0].prompt], [])
        warm = replace(config, max_steps=min(config.max_steps, 8))
        for spec in specs:
            engines[spec.engine].run(spec, warm_ids, warm)
    bar = tqdm(total=len(todo), desc="samples", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for first in range(0, len(todo), batch_size):
        group_ = todo[first : first + batch_size]
        for spec in specs:
            pending = [s for s in group_ if (s.id, spec.label) not in done]
            if not pending:
                continue
            if batch_size == 1:
                results = [run_sample(engines[spec.engine], spec, pending[0], encode, config)]
            else:
                results = run_samples(engines[spec.engine], spec, pending, encode, config)
            for sample, (out, prompt_len) in zip(pending, results):
                record = sample_record(sample, spec, out, prompt_len, execute, rank)
                log.append(record)
                records.append(record)
                if on_record:
                    on_record(record)
        bar.update(len(group_))
    bar.close()
    return records


def aggregate(records: Sequence[dict[str, Any]], specs: Sequence[Strategy]) -> dict[str, Any]:
    """Per strategy: mean/std/n of every speed and quality metric, and the speed-up of mean
    tokens/s over the same engine's autoregressive run (when it was part of the run)."""
    by_strategy = group(records, "strategy")
    out: dict[str, Any] = {}
    for spec in specs:
        rows = by_strategy.get(spec.label, [])
        entry: dict[str, Any] = {"engine": spec.engine, "name": spec.name, "exit_layer": spec.exit_layer,
                                 "num_speculations": spec.num_speculations, "samples": len(rows)}
        entry["speed"] = {k: summarize(r["speed"].get(k) for r in rows) for k in SPEED_KEYS}
        entry["quality"] = {k: summarize(r["metrics"].get(k) for r in rows) for k in QUALITY_KEYS
                            if any(k in r["metrics"] for r in rows)}
        out[spec.label] = entry
    for spec in specs:
        out[spec.label]["matches_autoregressive"] = _agreement(by_strategy.get(spec.label, []),
                                                               by_strategy.get(spec.baseline().label, []))
        base = out.get(spec.baseline().label)
        mine = out[spec.label]["speed"]["tokens_per_second"]["mean"]
        if base and base["speed"]["tokens_per_second"]["mean"] and mine:
            out[spec.label]["speedup"] = mine / base["speed"]["tokens_per_second"]["mean"]
        layerskip_base = out.get(Strategy().label)
        if layerskip_base and layerskip_base["speed"]["tokens_per_second"]["mean"] and mine:
            out[spec.label]["speedup_vs_layerskip_autoregressive"] = mine / layerskip_base["speed"]["tokens_per_second"]["mean"]
    return out


def _agreement(rows: Sequence[dict[str, Any]], baseline_rows: Sequence[dict[str, Any]]) -> float | None:
    """Fraction of samples whose generated token ids equal the same engine's autoregressive run's
    (1.0 for any lossless greedy strategy; what autoregressive early exit gives up)."""
    base = {r["sample_id"]: r["token_ids"] for r in baseline_rows}
    pairs = [(r["token_ids"], base[r["sample_id"]]) for r in rows if r["sample_id"] in base]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def summary_table(aggregates: Mapping[str, Any]) -> str:
    """A plain-text table of the aggregates for the terminal."""
    columns = ["strategy", "tok/s", "speed-up", "accept", "tok/verif", "ttft ms", "exit", "=AR", "ROUGE-L", "BLEU", "EM", "pass@1"]
    rows = []
    for label, a in aggregates.items():
        s, q = a["speed"], a["quality"]

        def fmt(entry: dict | None, scale: float = 1.0, digits: int = 3) -> str:
            return "-" if not entry or entry.get("mean") is None else f"{entry['mean'] * scale:.{digits}f}"

        rows.append([label, fmt(s["tokens_per_second"], digits=1),
                     f"{a['speedup']:.2f}x" if a.get("speedup") else "-", fmt(s["acceptance_rate"]),
                     fmt(s["mean_tokens_per_verification"], digits=2), fmt(s["time_to_first_token"], 1000, 1), fmt(s.get("mean_exit_layer"), digits=1),
                     "-" if a.get("matches_autoregressive") is None else f"{a['matches_autoregressive']:.2f}",
                     fmt(q.get("rougeL")), fmt(q.get("bleu"), digits=2), fmt(q.get("exact_match")), fmt(q.get("pass@1"))])
    widths = [max(len(str(r[i])) for r in [columns, *rows]) for i in range(len(columns))]
    line = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])
