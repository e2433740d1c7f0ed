"""Side-by-side speed of autoregressive and self-speculative decoding, in one process.

A grid of self-speculative settings (exit layer x k x draft length) run by ``layerskip benchmark``'s
own machinery (``layerskip.evaluation.runner``: interleaved per prompt after a warm-up, one
``Strategy`` each), greedy and without stopping at EOS, so every setting decodes the same number
of tokens; checks that greedy outputs equal autoregressive ones and prints tokens/s, acceptance
and the speed-up over autoregressive per setting as a Markdown table.

    python benchmarks/speed.py                                   # shipped model, HumanEval prompts
    python benchmarks/speed.py --exit_layer 1 2 3 4 --num_speculations 4 6
    python benchmarks/speed.py --model DIR --exit_layer 8 --num_speculations 6
    python benchmarks/speed.py --ceiling --exit_layer 2 --num_speculations 6
    python benchmarks/speed.py --exit_layer 2 --num_speculations 4 --draft_length heuristic fixed
    python benchmarks/speed.py --num_speculations 8 --draft_length threshold --confidence_threshold 0.3

Settings left out come from the model's recommended draft configuration (``layerskip.json``).

``--ceiling`` builds an 8-layer model (random weights, the shipped model's tokenizer) whose layers
from the exit layer up have zero output projections, so early-exit drafts are always accepted: the speed-up ceiling of the
engine, ``(k+1) / (k*E/L + verify cost)``, free of any training quality.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch

from layerskip.model.config import ModelConfig
from layerskip.drafters.config import DraftConfig
from layerskip.drafters.length import LENGTH_POLICIES
from layerskip.cli.arguments import flag_names
from layerskip.errors import LayerskipError, named_as_flags
from layerskip.evaluation.datasets import Sample, load_samples
from layerskip.evaluation.engines import LayerskipEngine
from layerskip.evaluation.records import SampleLog
from layerskip.evaluation.runner import aggregate, run_interleaved
from layerskip.decoding.settings import GenerationConfig
from layerskip.checkpoints.loading import default_model_path, load, load_tokenizer
from layerskip.model.decoder import LlamaForCausalLM
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.strategy import Strategy
from layerskip.training.checkpoint import save_pretrained
from layerskip.training.trainer import init_weights

CODE_PROMPTS = [
    "def fibonacci(n):",
    "import os\n\ndef list_files(path):",
    "class Stack:\n    def __init__(self):",
    "def is_prime(n: int) -> bool:",
]


def build_ceiling_model(directory: Path, exit_layer: int) -> Path:
    """An 8-layer random model whose layers ``exit_layer..`` add nothing to the residual stream."""
    tokenizer = load_tokenizer(default_model_path())
    config = ModelConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1024, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=64, eos_token_ids=(tokenizer.eos_token_id,))
    model = LlamaForCausalLM(config)
    init_weights(model, seed=0, std=0.05)
    with torch.no_grad():
        for layer in model.model.layers[exit_layer:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    save_pretrained(model, directory, tokenizer)
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
        model_dir = str(build_ceiling_model(Path(tmp.name) / "ceiling", (args.exit_layer or [2])[0]))
        args.prompts = "code"
    else:
        model_dir = args.model or str(default_model_path())
    loaded = load(model_dir, args.device, args.dtype, args.quantize)
    model, tok = loaded.model, loaded.tokenizer
    recommended = DraftConfig.from_dict(loaded.recommended)  # {} -> every field unset
    exit_layers = args.exit_layer or [recommended.exit_layer or 2]
    ks = args.num_speculations or [recommended.num_speculations or 4]
    lengths = args.draft_length or [recommended.draft_length]
    baseline = Strategy()
    specs = [Strategy("layerskip", "self_speculative",
                      recommended.merged(exit_layer=e, num_speculations=k, draft_length=n, confidence_threshold=args.confidence_threshold))
             for e, k, n in itertools.product(exit_layers, ks, lengths)]
    try:
        for spec in specs:
            spec.validate(model.num_layers)
    except LayerskipError as exc:
        parser.error(named_as_flags(str(exc), flag_names(parser)))
    cfg = GenerationConfig(max_steps=args.max_steps, sampling=SamplingConfig(sample=False), stop_token_ids=())
    if args.prompts == "code":
        prompts = [Sample(f"code/{i}", text, "") for i, text in enumerate(CODE_PROMPTS)]
    else:
        prompts = load_samples("human_eval", None, args.num_samples, 0, None, 0, False, "prompt", "response")
    samples = [Sample(f"{r}/{s.id}", s.prompt, s.reference) for r in range(args.repeats) for s in prompts]
    log = SampleLog(Path(tmp.name) / "samples.jsonl")
    records = run_interleaved(samples, [baseline, *specs], {"layerskip": LayerskipEngine(loaded)},
                              lambda turns, answers: tok(turns[0])["input_ids"], cfg, log)
    results = aggregate(records, [baseline, *specs])
    mean = lambda label, key: results[label]["speed"][key]["mean"] or 0.0  # noqa: E731
    name = "ceiling (8 layers, upper layers zeroed)" if args.ceiling else str(loaded.path)
    print(f"model: {name} ({model.num_layers} layers)")
    print(f"prompts: {args.prompts} x {len(prompts)}, repeats {args.repeats}, max_steps {args.max_steps}, greedy")
    print(f"device: {model.device}, dtype: {str(model.dtype).removeprefix('torch.')}, threads: {torch.get_num_threads()}")
    print("| strategy | exit layer | k | draft length | tokens/s | acceptance | tokens/verification | speed-up |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    print(f"| autoregressive | {model.num_layers} | - | - | {mean(baseline.label, 'tokens_per_second'):.1f} | - | 1.00 | 1.00x |")
    mismatches = 0
    for spec in specs:
        r = results[spec.label]
        mismatches += round((1 - r["matches_autoregressive"]) * r["samples"])
        print(f"| self_speculative | {spec.exit_layer} | {spec.num_speculations} | {spec.draft.draft_length} | "
              f"{mean(spec.label, 'tokens_per_second'):.1f} | {mean(spec.label, 'acceptance_rate'):.3f} | "
              f"{mean(spec.label, 'mean_tokens_per_verification'):.2f} | {r['speedup']:.2f}x |")
    if mismatches:
        print(f"warning: {mismatches} greedy outputs differed from autoregressive (low-precision ties)", file=sys.stderr)


if __name__ == "__main__":
    main()
