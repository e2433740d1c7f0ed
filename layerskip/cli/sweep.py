"""``layerskip sweep``: the grid exit layer x number of speculations, with a CSV and a heat map."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from layerskip.adapter import read_adapter_config
from layerskip.cli.arguments import add, add_dataset_arguments, add_generation_arguments, add_model_arguments
from layerskip.cli.harness import prepare
from layerskip.cli.settings import draft_config
from layerskip.errors import LayerskipError
from layerskip.evaluation.records import merge_rank_logs, rank_log, run_paths
from layerskip.evaluation.runner import aggregate, run_interleaved
from layerskip.strategy import Strategy

CSV_FIELDS = ["exit_layer", "num_speculations", "tokens_per_second", "tokens_per_second_std", "speedup",
              "acceptance_rate", "mean_tokens_per_verification", "time_per_token", "rougeL", "samples"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sweep", help="grid search over exit layer x num_speculations")
    add_model_arguments(parser)
    add_generation_arguments(parser)
    add_dataset_arguments(parser)
    add(parser, "exit_layer_first", type=int, default=1)
    add(parser, "exit_layer_last", type=int, default=None, help="default: L-1")
    add(parser, "exit_layer_step", type=int, default=1)
    add(parser, "num_speculations_first", type=int, default=1)
    add(parser, "num_speculations_last", type=int, default=6)
    add(parser, "num_speculations_step", type=int, default=1)
    parser.set_defaults(handler=run, generation_strategy="self_speculative", num_samples=10)


def grid(first: int, last: int, step: int, what: str) -> list[int]:
    if step < 1 or last < first:
        raise LayerskipError(f"empty {what} range {first}..{last} step {step}")
    return list(range(first, last + 1, step))


def heat_map(rows: list[dict], path: Path, baseline_tps: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    exits = sorted({r["exit_layer"] for r in rows})
    ks = sorted({r["num_speculations"] for r in rows})
    values = np.full((len(exits), len(ks)), np.nan)
    for r in rows:
        values[exits.index(r["exit_layer"]), ks.index(r["num_speculations"])] = r["tokens_per_second"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(ks), 1.2 + 0.5 * len(exits)))
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(exits)), [str(e) for e in exits])
    ax.set_xlabel("num_speculations")
    ax.set_ylabel("exit_layer")
    ax.set_title(f"tokens/s (autoregressive: {baseline_tps:.1f})")
    for i in range(len(exits)):
        for j in range(len(ks)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j] / baseline_tps:.2f}x", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=ax, label="tokens/s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    harness = prepare(args)
    layers = harness.loaded.model.num_layers
    exits = grid(args.exit_layer_first, args.exit_layer_last or layers - 1, args.exit_layer_step, "exit layer")
    ks = grid(args.num_speculations_first, args.num_speculations_last, args.num_speculations_step, "num_speculations")
    baseline = Strategy()
    base = draft_config(args, harness.loaded.recommended, speculative=True)
    if base.draft_adapter is not None:  # an adapter drafts at the exit layer it was trained for
        exits = [read_adapter_config(base.draft_adapter).exit_layer]
    points = [Strategy("layerskip", "self_speculative", base.merged(exit_layer=e, num_speculations=k)) for e in exits for k in ks]
    specs = [baseline, *points]
    harness.ensure_engines(specs)
    json_path, samples_path = harness.world.broadcast(
        run_paths(args.output_dir, "sweep", args.dataset) if harness.world.is_main else None)
    world = harness.world
    log = rank_log(samples_path, world.size, world.rank)
    run_interleaved(world.shard(harness.samples), specs, harness.engines, harness.encode, harness.config, log,
                    progress=not args.no_progress and world.is_main, rank=world.rank)
    world.barrier()
    if not world.is_main:
        return 0
    records = merge_rank_logs(samples_path, world.size)
    aggregates = aggregate(records, specs)
    base_tps = aggregates[baseline.label]["speed"]["tokens_per_second"]["mean"]
    rows = []
    for spec in points:
        a = aggregates[spec.label]
        s = a["speed"]
        rows.append({"exit_layer": spec.exit_layer, "num_speculations": spec.num_speculations,
                     "tokens_per_second": s["tokens_per_second"]["mean"], "tokens_per_second_std": s["tokens_per_second"]["std"],
                     "speedup": a.get("speedup"), "acceptance_rate": s["acceptance_rate"]["mean"],
                     "mean_tokens_per_verification": s["mean_tokens_per_verification"]["mean"],
                     "time_per_token": s["time_per_token"]["mean"],
                     "rougeL": a["quality"].get("rougeL", {}).get("mean"), "samples": a["samples"]})
    base = json_path.with_suffix("")
    csv_path, png_path, best_path = base.with_suffix(".csv"), base.with_suffix(".png"), base.with_name(base.name + "_best.json")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    heat_map(rows, png_path, base_tps)
    best = max(rows, key=lambda r: r["tokens_per_second"] or 0)
    best_doc = {"exit_layer": best["exit_layer"], "num_speculations": best["num_speculations"],
                "tokens_per_second": best["tokens_per_second"], "speedup": best["speedup"],
                "acceptance_rate": best["acceptance_rate"], "autoregressive_tokens_per_second": base_tps,
                "model": str(harness.loaded.path), "dataset": args.dataset, "samples": len(harness.samples)}
    best_path.write_text(json.dumps(best_doc, indent=2) + "\n")
    print(f"autoregressive: {base_tps:.1f} tok/s")
    print(f"best: exit_layer={best['exit_layer']} num_speculations={best['num_speculations']} "
          f"{best['tokens_per_second']:.1f} tok/s ({best['speedup']:.2f}x, acceptance {best['acceptance_rate']:.3f})")
    print(f"csv: {csv_path}\nheat map: {png_path}\nbest: {best_path}", file=sys.stderr)
    return 0
