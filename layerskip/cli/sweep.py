"""``layerskip sweep``: the grid exit layer x number of speculations, with a CSV and a heat map."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from layerskip.model.adapter import read_adapter_config
from layerskip.cli.arguments import add, harness_command
from layerskip.cli.harness import prepare
from layerskip.cli.settings import draft_config
from layerskip.errors import LayerskipError
from layerskip.evaluation.fingerprint import run_fingerprint
from layerskip.evaluation.heat_map import heat_map
from layerskip.evaluation.records import RUN_FORMAT, SampleLog, merge_rank_logs, rank_log, run_paths, write_json
from layerskip.evaluation.runner import aggregate, run_interleaved
from layerskip.evaluation.sweep import best_point, grid, point_row, write_best, write_csv
from layerskip.decoding.strategy import Strategy

#: upstream flags a sweep cannot honour: it runs self_speculative over its own grid
FIXED_BY_GRID = ("generation_strategy", "exit_layer", "num_speculations")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = harness_command(
        subparsers, "sweep", "grid search over exit layer x num_speculations",
        "Run self-speculative decoding at every point of the grid exit layer x number of speculations (and "
        "autoregressive decoding once, the baseline), point by point: the CSV is rewritten after each point, "
        "--resume continues an interrupted sweep; at the end a heat map (PNG) and the best point (JSON).",
        "layerskip sweep --dataset human_eval --num_samples 10 --sample False --max_steps 128 "
        "--exit_layer_first 1 --exit_layer_last 6 --num_speculations_first 2 --num_speculations_last 8 --num_speculations_step 2")
    add(parser, "exit_layer_first", type=int, default=1, help="first exit layer of the grid")
    add(parser, "exit_layer_last", type=int, default=None, help="last exit layer of the grid (default: L-1)")
    add(parser, "exit_layer_step", type=int, default=1, help="exit layer step")
    add(parser, "num_speculations_first", type=int, default=1, help="first number of speculations of the grid")
    add(parser, "num_speculations_last", type=int, default=6, help="last number of speculations of the grid")
    add(parser, "num_speculations_step", type=int, default=1, help="number of speculations step")
    add(parser, "resume", nargs="?", const=".", default=None,
        help="continue a sweep: its .csv, .json, _samples.jsonl, or a directory (its latest sweep; default: --output_dir)")
    # None marks "not given": the grid sets these, so a value given is refused (see FIXED_BY_GRID)
    parser.set_defaults(handler=run, generation_strategy=None, num_samples=10)


def check_grid_flags(args: argparse.Namespace) -> None:
    given = [f"--{name}" for name in FIXED_BY_GRID if getattr(args, name) not in (None, -1)]
    if given:
        raise LayerskipError(f"{'/'.join(given)} cannot be honoured: the sweep runs self_speculative over its own grid "
                             "(set it with --exit_layer_first/--exit_layer_last/--num_speculations_first/...)")


def title(args: argparse.Namespace, samples: int, dtype: str) -> str:
    """What the heat map measured: dataset, samples, dtype and sampling mode."""
    mode = f"sampled (T={args.temperature:g}, top_p={args.top_p:g}, top_k={args.top_k})" if args.sample else "greedy"
    return f"{args.dataset}, {samples} samples, {dtype}, {mode}, max_steps {args.max_steps}"


def run(args: argparse.Namespace) -> int:
    check_grid_flags(args)
    if args.resume == ".":
        args.resume = args.output_dir
    harness = prepare(args)
    loaded, world = harness.loaded, harness.world
    exits = grid(args.exit_layer_first, args.exit_layer_last or loaded.model.num_layers - 1, args.exit_layer_step, "exit layer")
    ks = grid(args.num_speculations_first, args.num_speculations_last, args.num_speculations_step, "num_speculations")
    baseline = Strategy()
    base = draft_config(args, loaded.recommended, speculative=True)
    if base.draft_adapter is not None:  # an adapter drafts at the exit layer it was trained for
        exits = [read_adapter_config(base.draft_adapter).exit_layer]
    points = [Strategy("layerskip", "self_speculative", base.merged(exit_layer=e, num_speculations=k)) for e in exits for k in ks]
    specs = [baseline, *points]
    harness.ensure_engines(specs)
    fingerprint = run_fingerprint(loaded.path, loaded.model, harness.samples, [s.label for s in specs], harness.config)
    paths = run_paths(args.output_dir, "sweep", args.dataset, args.resume, fingerprint) if world.is_main else None
    json_path, samples_path = world.broadcast(paths)
    stem = json_path.with_suffix("")
    csv_path, png_path, best_path = stem.with_suffix(".csv"), stem.with_suffix(".png"), stem.with_name(stem.name + "_best.json")
    log = rank_log(samples_path, world.size, world.rank)
    done = {(r["sample_id"], r["strategy"]) for r in SampleLog(samples_path).read() + (log.read() if world.size > 1 else [])}
    shard = world.shard(harness.samples)
    rows: list[dict] = []
    bar = tqdm(total=len(specs), desc="grid points", unit="point", disable=args.no_progress or not world.is_main,
               file=sys.stderr, dynamic_ncols=True)
    for spec in specs:
        bar.set_postfix_str(spec.label.removeprefix("self_speculative:"))
        run_interleaved(shard, [spec], harness.engines, harness.encode_turns, harness.config, log, done, rank=world.rank, progress=False)
        world.barrier()
        if world.is_main:
            aggregates = aggregate(merge_rank_logs(samples_path, world.size), specs)
            rows = [point_row(p, aggregates[p.label]) for p in points if aggregates[p.label]["samples"]]
            write_csv(csv_path, rows)
        world.barrier()  # every rank's shard is merged before any rank appends the next point's records
        bar.update(1)
    bar.close()
    if not world.is_main:
        return 0
    base_tps = aggregates[baseline.label]["speed"]["tokens_per_second"]["mean"]
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    heat_map(rows, png_path, base_tps, title(args, len(harness.samples), dtype))
    best = best_point(rows)
    write_best(best_path, best, base_tps, {"model": str(loaded.path), "dataset": args.dataset, "samples": len(harness.samples)})
    write_json(json_path, {"format": RUN_FORMAT, "command": "sweep", "status": "complete", "fingerprint": fingerprint,
                           "arguments": vars(args) | {"handler": None}, "results": aggregates, "csv": str(csv_path)})
    print(f"autoregressive: {base_tps:.1f} tok/s")
    print(f"best: exit_layer={best['exit_layer']} num_speculations={best['num_speculations']} "
          f"{best['tokens_per_second']:.1f} tok/s ({best['speedup']:.2f}x, acceptance {best['acceptance_rate']:.3f})")
    print(f"csv: {csv_path}\nheat map: {png_path}\nbest: {best_path}", file=sys.stderr)
    return 0
