"""``layerskip correctness``: greedy autoregressive vs a strategy, sample by sample.

Every mismatch is reported with the first position where the token ids differ; any mismatch
makes the command exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace

from layerskip.cli.arguments import add_batch_size, harness_command
from layerskip.cli.harness import prepare
from layerskip.cli.settings import strategy
from layerskip.evaluation.records import environment, merge_rank_logs, rank_log, run_paths, write_json
from layerskip.evaluation.runner import run_interleaved
from layerskip.decoding.strategy import Strategy
from layerskip.decoding.sampling import SamplingConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = harness_command(
        subparsers, "correctness", "check that a strategy reproduces greedy autoregressive output",
        "Run greedy autoregressive decoding and a strategy on the same samples and compare their token ids; exits with status 1 on any mismatch (--sample is ignored: greedy decoding is compared).",
        "layerskip correctness --dataset human_eval --num_samples 10 --exit_layer 2 --num_speculations 6")
    parser.set_defaults(handler=run, generation_strategy="self_speculative", sample=False)
    parser.set_defaults(num_samples=10)
    add_batch_size(parser)


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run(args: argparse.Namespace) -> int:
    if args.sample:
        print("correctness: greedy decoding is compared (--sample ignored)", file=sys.stderr)
    harness = prepare(args)
    harness.config = replace(harness.config, sampling=SamplingConfig(sample=False, no_repeat_ngram_size=harness.config.sampling.no_repeat_ngram_size))
    baseline = Strategy()
    candidate = strategy(args, harness.loaded.recommended)
    specs = [baseline, candidate]
    harness.ensure_engines(specs)
    json_path, samples_path = harness.world.broadcast(
        run_paths(args.output_dir, "correctness", args.dataset) if harness.world.is_main else None)
    world = harness.world
    run_interleaved(world.shard(harness.samples), specs, harness.engines, harness.encode_turns, harness.config,
                    rank_log(samples_path, world.size, world.rank), progress=not args.no_progress and world.is_main,
                    rank=world.rank, batch_size=args.batch_size)
    world.barrier()
    if not world.is_main:
        return 0
    by_sample: dict[str, dict[str, list[int]]] = {}
    for r in merge_rank_logs(samples_path, world.size):
        by_sample.setdefault(r["sample_id"], {})[r["strategy"]] = r["token_ids"]
    mismatches = []
    for sample_id, outputs in by_sample.items():
        ref, got = outputs[baseline.label], outputs[candidate.label]
        position = first_difference(ref, got)
        if position is not None:
            mismatches.append({"sample_id": sample_id, "position": position,
                               "expected": ref[position : position + 5], "got": got[position : position + 5],
                               "expected_length": len(ref), "got_length": len(got)})
    document = {"command": "correctness", "arguments": vars(args) | {"handler": None}, "model": str(harness.loaded.path),
                "generation": asdict(harness.config), "baseline": baseline.label, "candidate": candidate.label,
                "samples": len(by_sample), "mismatches": mismatches, "world_size": world.size,
                "environment": environment(harness.loaded.model.device, harness.loaded.model.dtype)}
    write_json(json_path, document)
    for m in mismatches:
        print(f"MISMATCH sample {m['sample_id']} at token {m['position']}: expected {m['expected']} got {m['got']}")
    print(f"{candidate.label} vs {baseline.label}: {len(by_sample)} samples, {len(mismatches)} mismatches ({json_path})")
    return 1 if mismatches else 0
