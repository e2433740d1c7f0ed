"""Batched decoding speed, side by side in one process: autoregressive vs self-speculative at 1..16 rows.

For each row count B the same B HumanEval prompts are decoded by ``generate_many`` (one batch of B
rows, greedy, ``--max_steps`` tokens each without stopping at EOS, so every row decodes the same
number of tokens), autoregressive and self-speculative (the checkpoint's recommended draft, or
``--strategy``) in alternation, ``--repeats`` times after a warm-up each. Prints per B: aggregate
tokens/s (all rows' tokens over the batch's wall time), per-row tokens/s, acceptance, mean
acceptance length, the self-speculative / autoregressive ratio at the same B and the aggregate over
batch-1 autoregressive, and checks every self-speculative row equals its autoregressive row.

    python benchmarks/batch_speed.py --model smollm2-135m-instruct --rows 1 2 4 8 16
    python benchmarks/batch_speed.py --model smollm2-135m-instruct --rows 1 4 8 --compile True
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from layerskip.checkpoints.loading import load
from layerskip.cli.arguments import str2bool
from layerskip.decoding.loop import generate_many
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.strategy import Strategy
from layerskip.drafters.config import DraftConfig
from layerskip.errors import LayerskipError, named_as_flags
from layerskip.evaluation.datasets import load_samples


def measure(loaded, prompts: list[list[int]], config: GenerationConfig, spec: Strategy, repeats: int) -> dict:
    model = loaded.model
    generate_many(model, prompts, GenerationConfig(max_steps=8, sampling=config.sampling),
                  spec.decoding(model.num_layers))  # warm-up (and compile) at this batch size
    runs = []
    for _ in range(repeats):
        results, summary = generate_many(model, prompts, config, spec.decoding(model.num_layers))
        runs.append((summary, results))
    summary, results = min(runs, key=lambda r: r[0].seconds)
    return {"aggregate": summary.tokens_per_second,
            "per_row": statistics.mean(r.stats.tokens_per_second for r in results),
            "acceptance": summary.acceptance_rate, "mean_acceptance_length": summary.mean_acceptance_length,
            "tokens": [r.token_ids for r in results], "seconds": summary.seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", type=str2bool, default=False)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--max_steps", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--strategy", default=None, help="a self_speculative spec (default: the recommended draft)")
    parser.add_argument("--out", default=None, help="write the table's figures as JSON here")
    args = parser.parse_args(argv)
    try:
        loaded = load(args.model, "auto", args.dtype, compile=args.compile)
        model = loaded.model
        samples = load_samples("human_eval", num_samples=max(args.rows))
        prompts = [loaded.tokenizer(s.prompt)["input_ids"] for s in samples]
        base = DraftConfig.from_dict(loaded.recommended, "the model's recommended setting") if loaded.recommended else DraftConfig()
        spec = Strategy.parse(args.strategy, base) if args.strategy else Strategy("layerskip", "self_speculative", base)
        spec.validate(model.num_layers)
    except LayerskipError as error:
        sys.exit(f"error: {named_as_flags(str(error))}")
    config = GenerationConfig(max_steps=args.max_steps, sampling=SamplingConfig(sample=False))
    print(f"model {loaded.path.name}, {model.dtype}, compile={args.compile}, threads={torch.get_num_threads()}")
    print(f"self-speculative: {spec.label}\n")
    print("| rows | AR agg tok/s | SD agg tok/s | SD/AR | AR per-row | SD per-row | acceptance | mean acc. len | AR agg / AR@1 | SD agg / AR@1 | SD = AR |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    table, ar_one = [], None
    for rows in args.rows:
        batch = prompts[:rows]
        ar = measure(loaded, batch, config, Strategy(), args.repeats)
        sd = measure(loaded, batch, config, spec, args.repeats)
        ar_one = ar_one or (ar["aggregate"] if rows == 1 else None)
        one = ar_one or ar["aggregate"] / rows
        same = sd["tokens"] == ar["tokens"]
        print(f"| {rows} | {ar['aggregate']:.1f} | {sd['aggregate']:.1f} | {sd['aggregate'] / ar['aggregate']:.2f} | "
              f"{ar['per_row']:.1f} | {sd['per_row']:.1f} | {sd['acceptance'] or 0:.2f} | {sd['mean_acceptance_length'] or 0:.2f} | "
              f"{ar['aggregate'] / one:.2f} | {sd['aggregate'] / one:.2f} | {same} |", flush=True)
        table.append({"rows": rows, "autoregressive": {k: v for k, v in ar.items() if k != "tokens"},
                      "self_speculative": {k: v for k, v in sd.items() if k != "tokens"}, "same_tokens": same})
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"model": str(loaded.path), "compile": args.compile, "strategy": spec.label, "rows": table}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
