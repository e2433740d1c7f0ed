"""Side-by-side speed of autoregressive and self-speculative decoding, in one process.

Runs both strategies interleaved (AR, spec, AR, spec, ...) on the same model and prompts after a
warm-up, checks that greedy outputs are identical, and prints tokens/s and the ratio.

    python benchmarks/speed.py --model DIR --exit_layer 4 --num_speculations 6
    python benchmarks/speed.py --ceiling     # a model whose first layers agree with the full model

``--ceiling`` builds an 8-layer model (random weights) whose layers from ``--exit_layer`` up have
zero output projections, so early-exit drafts are always accepted: the speed-up ceiling of the
engine, ``(k+1) / (k*E/L + verify cost)``, free of any training quality.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from layerskip.drafting import EarlyExitDrafter
from layerskip.generation import GenerationConfig, generate
from layerskip.loading import load
from layerskip.sampling import SamplingConfig

PROMPTS = [
    "def fibonacci(n):",
    "import os\n\ndef list_files(path):",
    "class Stack:\n    def __init__(self):",
    "def is_prime(n: int) -> bool:",
]


def build_ceiling_model(directory: Path, exit_layer: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import make_checkpoint
    from safetensors.torch import load_file, save_file

    make_checkpoint(directory, layers=8, hidden=512, heads=8, kv_heads=4, vocab_size=2048, init_std=0.05)
    weights = load_file(str(directory / "model.safetensors"))
    for name in weights:
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else -1
        if layer >= exit_layer and name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name].zero_()
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--ceiling", action="store_true")
    parser.add_argument("--exit_layer", type=int, default=2)
    parser.add_argument("--num_speculations", type=int, default=6)
    parser.add_argument("--max_steps", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if not args.model and not args.ceiling:
        parser.error("give --model DIR or --ceiling")
    tmp = tempfile.TemporaryDirectory()
    model_dir = build_ceiling_model(Path(tmp.name), args.exit_layer) if args.ceiling else args.model
    loaded = load(str(model_dir), args.device, args.dtype)
    model, tok = loaded.model, loaded.tokenizer
    cfg = GenerationConfig(max_steps=args.max_steps, sampling=SamplingConfig(sample=False), stop_token_ids=())
    drafter = EarlyExitDrafter(args.exit_layer, args.num_speculations)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    generate(model, prompts[0], cfg)  # warm-up
    generate(model, prompts[0], cfg, drafter)
    ar_tps, sp_tps, acc = [], [], []
    for _ in range(args.repeats):
        for ids in prompts:
            ar = generate(model, ids, cfg)
            sp = generate(model, ids, cfg, drafter)
            if ar.token_ids != sp.token_ids:
                print("warning: outputs differ (numerical ties in low precision?)", file=sys.stderr)
            ar_tps.append(ar.stats.tokens_per_second)
            sp_tps.append(sp.stats.tokens_per_second)
            acc.append(sp.stats.acceptance_rate or 0.0)
    ar_mean, sp_mean = statistics.mean(ar_tps), statistics.mean(sp_tps)
    print(f"model: {loaded.path if not args.ceiling else 'ceiling (8 layers, upper layers zeroed)'}")
    print(f"device: {model.device}, dtype: {model.dtype}, threads: {torch.get_num_threads()}")
    print(f"{'strategy':<34}{'tokens/s':>10}{'acceptance':>12}")
    print(f"{'autoregressive':<34}{ar_mean:>10.1f}{'-':>12}")
    label = f"self_speculative E={args.exit_layer} k={args.num_speculations}"
    print(f"{label:<34}{sp_mean:>10.1f}{statistics.mean(acc):>12.3f}")
    print(f"speed-up: {sp_mean / ar_mean:.2f}x")


if __name__ == "__main__":
    main()
