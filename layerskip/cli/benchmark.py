"""``layerskip benchmark``: speed and quality of one or several strategies on a dataset."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from layerskip.cli.arguments import add, add_batch_size, harness_command
from layerskip.cli.harness import prepare
from layerskip.cli.settings import draft_config, strategy
from layerskip.errors import LayerskipError
from layerskip.evaluation.categories import category_chart, category_results, category_table
from layerskip.evaluation.fingerprint import run_fingerprint
from layerskip.evaluation.records import RUN_FORMAT, SampleLog, environment, merge_rank_logs, rank_log, run_paths, write_json
from layerskip.evaluation.runner import aggregate, run_interleaved, summary_table
from layerskip.evaluation.sandbox import require_sandbox
from layerskip.checkpoints.loading import LoadedModel
from layerskip.decoding.strategy import Strategy


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = harness_command(
        subparsers, "benchmark", "measure speed and quality on a dataset",
        "Speed (tokens/s, acceptance, time to first token) and quality (ROUGE, BLEU, exact match, edit distance, pass@1) of one strategy, or of several side by side with --compare, on a dataset; results JSON and per-sample JSONL in --output_dir.",
        "layerskip benchmark --dataset human_eval --num_samples 10 --sample False --compare autoregressive self_speculative")
    add_batch_size(parser)
    add(parser, "compare", nargs="*", default=None,
        help="run several strategies side by side (default with the flag alone: autoregressive self_speculative); "
             "each [hf:]autoregressive or [hf:]self_speculative[:exit_layer=E,num_speculations=k]")
    add(parser, "engine", default="layerskip", choices=["layerskip", "transformers", "both"],
        help="transformers: run Hugging Face generate (assistant_early_exit for self_speculative); both: each strategy in both")
    add(parser, "allow_code_execution", type=bool, default=False,
        help="human_eval: execute the generated code against the problem's tests (pass@1); untrusted code!")
    add(parser, "resume", nargs="?", const=".", default=None,
        help="continue a run: its _samples.jsonl, its .json, or a directory (its latest run; default: --output_dir)")
    parser.set_defaults(handler=run)


def strategy_specs(args: argparse.Namespace, loaded: LoadedModel) -> list[Strategy]:
    """The strategies to run: the one the generation flags describe, or the ``--compare`` specs
    (self_speculative fills what a spec leaves out from the flags and the model's recommendation)."""
    engines = {"layerskip": ["layerskip"], "transformers": ["transformers"], "both": ["layerskip", "transformers"]}[args.engine]
    if args.compare is None:
        chosen = [strategy(args, loaded.recommended)]
    else:
        defaults = draft_config(args, loaded.recommended, speculative=True)
        chosen = [Strategy.parse(name, defaults) for name in (args.compare or ["autoregressive", "self_speculative"])]
    specs: list[Strategy] = []
    for engine in engines:
        for spec in chosen:
            if engine == "transformers" and spec.engine == "layerskip":
                spec = spec.on_engine("transformers")
            if spec.label not in {s.label for s in specs}:
                specs.append(spec)
    return specs


def run(args: argparse.Namespace) -> int:
    if args.resume == ".":
        args.resume = args.output_dir
    if args.allow_code_execution and args.dataset != "human_eval":
        raise LayerskipError("--allow_code_execution only applies to --dataset human_eval")
    execute = args.allow_code_execution and args.dataset == "human_eval"
    if execute:
        require_sandbox()
    harness = prepare(args)
    specs = strategy_specs(args, harness.loaded)
    harness.ensure_engines(specs)
    fingerprint = run_fingerprint(harness.loaded.path, harness.loaded.model, harness.samples, [s.label for s in specs],
                                  harness.config, execute, args.batch_size)
    world = harness.world
    paths = run_paths(args.output_dir, "benchmark", args.dataset, args.resume, fingerprint) if world.is_main else None
    json_path, samples_path = world.broadcast(paths)
    log = rank_log(samples_path, world.size, world.rank)
    done = {(r["sample_id"], r["strategy"]) for r in SampleLog(samples_path).read() + (log.read() if world.size > 1 else [])}
    run_interleaved(world.shard(harness.samples), specs, harness.engines, harness.encode_turns, harness.config, log, done,
                    execute, world.rank, progress=not args.no_progress and world.is_main, batch_size=args.batch_size)
    world.barrier()
    if not world.is_main:
        return 0
    labels = {s.label for s in specs}
    records = [r for r in merge_rank_logs(samples_path, world.size) if r["strategy"] in labels]
    aggregates = aggregate(records, specs)
    document = {
        "format": RUN_FORMAT,
        "command": "benchmark",
        "status": "complete",
        "fingerprint": fingerprint,
        "arguments": vars(args) | {"handler": None},
        "generation": asdict(harness.config),
        "model": str(harness.loaded.path),
        "strategies": [s.label for s in specs],
        "num_samples": len(harness.samples),
        "world_size": world.size,
        "environment": environment(harness.loaded.model.device, harness.loaded.model.dtype),
        "samples_file": str(samples_path),
        "results": aggregates,
    }
    categories = category_results(records, specs) if any("category" in r for r in records) else {}
    if categories:
        document["categories"] = categories
    write_json(json_path, document)
    print(summary_table(aggregates))
    for label, table in categories.items():
        print("\n" + category_table(label, table))
    if categories:
        chart = json_path.with_name(json_path.stem + "_categories.png")
        model_name = harness.loaded.path.name
        category_chart(categories, chart, f"{model_name}, {args.dataset}, greedy={not harness.config.sampling.sample}, "
                                          f"max {harness.config.max_steps} tokens, {str(harness.loaded.model.dtype)[6:]}")
        print(f"chart: {chart}", file=sys.stderr)
    print(f"results: {json_path}\nsamples: {samples_path}", file=sys.stderr)
    return 0
