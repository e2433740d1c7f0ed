"""``layerskip tune``: Bayesian search for the fastest draft configuration on calibration prompts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from layerskip.cli.arguments import add, harness_command
from layerskip.cli.harness import prepare
from layerskip.cli.settings import draft_config
from layerskip.errors import LayerskipError
from layerskip.decoding.sampling import SamplingConfig
from layerskip.evaluation.tuning import tune
from layerskip.evaluation.tuning_output import save_recommendation, write_tuned


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = harness_command(
        subparsers, "tune", "search exit layer, k, skip sets, criteria and thresholds for speed",
        "Bayesian search (optuna TPE) for the fastest lossless draft configuration on calibration prompts, measured "
        "with greedy decoding; writes a draft config JSON usable as --draft_config anywhere.",
        "layerskip tune --dataset human_eval --num_samples 4 --trials 40 --time_budget 600 --output tuned.json")
    add(parser, "trials", type=int, default=30, help="number of configurations to try")
    add(parser, "time_budget", type=float, default=None, help="stop searching after this many seconds (default: no limit)")
    add(parser, "max_speculations", type=int, default=8, help="largest k to try")
    add(parser, "modes", nargs="+", default=["early_exit", "layer_skip", "dynamic_exit"],
        choices=["early_exit", "layer_skip", "dynamic_exit"], help="kinds of draft to search")
    add(parser, "output", default=None, help="draft config file to write (default: OUTPUT_DIR/draft_config.json)")
    add(parser, "save_recommended", type=bool, default=False,
        help="also store the best configuration as the model's recommended setting (layerskip.json)")
    parser.set_defaults(handler=run, num_samples=4, max_steps=64, sample=False, generation_strategy="self_speculative")


def run(args: argparse.Namespace) -> int:
    if args.trials < 1:
        raise LayerskipError("--trials must be >= 1")
    harness = prepare(args)
    model = harness.loaded.model
    config = harness.config
    if config.sampling.sample:
        print("tune: measuring with greedy decoding (--sample ignored)", file=sys.stderr)
        from dataclasses import replace

        config = replace(config, sampling=SamplingConfig(sample=False))
    prompts = [harness.encode(s.prompt) for s in harness.samples]
    default = draft_config(args, harness.loaded.recommended, speculative=True)
    if (default.exit_layer is None and default.draft_adapter is None) or default.num_speculations is None:
        default = None
    bar = tqdm(total=args.trials, desc="tune", disable=args.no_progress, file=sys.stderr)

    def on_trial(n: int, value: float, best: float) -> None:
        bar.update(1)
        bar.set_postfix(tok_s=f"{value:.1f}", best=f"{best:.1f}")

    result = tune(model, prompts, config, args.trials, args.time_budget, args.seed, args.max_speculations,
                  args.modes, default, on_trial)
    bar.close()
    out = Path(args.output or Path(args.output_dir) / "draft_config.json")
    measured = {"tokens_per_second": result.best_tokens_per_second,
                "autoregressive_tokens_per_second": result.autoregressive_tokens_per_second,
                "speedup": result.best_tokens_per_second / result.autoregressive_tokens_per_second,
                "default": default.to_dict() if default else None,
                "default_tokens_per_second": result.default_tokens_per_second,
                "beats_default": result.beats_default, "trials": result.trials, "dataset": args.dataset,
                "prompts": len(prompts), "max_steps": config.max_steps, "model": str(harness.loaded.path)}
    write_tuned(out, result.best, measured, result.history)
    print(f"autoregressive: {result.autoregressive_tokens_per_second:.1f} tok/s")
    if result.default_tokens_per_second is not None:
        print(f"default ({default.label()}): {result.default_tokens_per_second:.1f} tok/s")
    print(f"best ({result.best.label()}): {result.best_tokens_per_second:.1f} tok/s "
          f"({measured['speedup']:.2f}x over autoregressive)")
    if not result.beats_default:
        print("the search found nothing faster than the default on these prompts: keep the default "
              "(the tuned file still records the best candidate)")
    if args.save_recommended:
        if not result.beats_default:
            print("not saved as the recommendation: it does not beat the current one", file=sys.stderr)
        else:
            saved = save_recommendation(harness.loaded.path, result.best)
            print(f"saved as the recommended setting in {saved}", file=sys.stderr)
    print(f"draft config: {out}", file=sys.stderr)
    return 0
