"""Batch-1 speed of two checkouts of layerskip side by side: did a change cost the one-row path anything?

Each checkout (a ``git worktree`` of another commit, and this one) runs in its own child process with
``PYTHONPATH`` set to it, in alternation, ``--rounds`` times: the child loads the model once per strategy
through the public API (``layerskip.LLM``, which both sides have), decodes ``--num_samples`` HumanEval
prompts greedily for ``--max_steps`` tokens after ``--warmup`` other prompts, and prints its aggregate
tokens/s. With ``--compile True`` a graph variant first met in a measured prompt (a call shape the warm-up
did not have: which ones appear depends on the prompts) costs tens of seconds there: two warm-up prompts
cover every variant a greedy HumanEval run has met on both sides so far.
The parent prints per strategy the median tokens/s of each checkout and the ratio, and checks the two
produced the same tokens.

    git worktree add /tmp/base HEAD~1
    python benchmarks/worktrees.py --base /tmp/base --model smollm2-135m-instruct --rounds 3
    python benchmarks/worktrees.py --base /tmp/base --model smollm2-135m-instruct --compile True
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
from layerskip import LLM, SamplingParams
from layerskip.evaluation.datasets import load_samples

model, strategy, samples, steps, dtype, compile_, warmup = sys.argv[1:8]
prompts = [s.prompt for s in load_samples("human_eval", num_samples=int(samples) + int(warmup))]
llm = LLM(model, dtype=dtype, compile=compile_ == "True", generation_strategy=strategy)
params = SamplingParams(temperature=0.0, max_tokens=int(steps), ignore_eos=True)
for prompt in prompts[: int(warmup)]:  # warm-up (and compile)
    llm.generate([prompt], params)
tokens, seconds, outputs = 0, 0.0, []
for prompt in prompts[int(warmup) :]:
    start = time.perf_counter()
    out = llm.generate([prompt], params)[0].outputs[0]
    seconds += time.perf_counter() - start
    tokens += len(out.token_ids)
    outputs.append(out.token_ids)
print(json.dumps({"tokens_per_second": tokens / seconds, "outputs": outputs}))
"""


def run_child(checkout: Path, args: argparse.Namespace, strategy: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, "-c", CHILD, args.model, strategy, str(args.num_samples), str(args.max_steps),
               args.dtype, str(args.compile), str(args.warmup)]
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        sys.exit(f"{checkout}: the child failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (a git worktree)")
    parser.add_argument("--candidate", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", default="False", choices=["True", "False"])
    parser.add_argument("--strategies", nargs="+", default=["autoregressive", "self_speculative"])
    parser.add_argument("--num_samples", type=int, default=5)
    parser.add_argument("--max_steps", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="prompts decoded before the measured ones")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per child process")
    args = parser.parse_args(argv)
    for path in (args.base, args.candidate):
        if not (path / "layerskip" / "__init__.py").is_file():
            parser.error(f"{path} is not a layerskip checkout")
    print(f"| strategy | base tok/s | candidate tok/s | candidate / base | same tokens |\n| --- | --- | --- | --- | --- |")
    for strategy in args.strategies:
        rates: dict[str, list[float]] = {"base": [], "candidate": []}
        outputs: dict[str, list] = {}
        for _ in range(args.rounds):
            for name, path in (("base", args.base), ("candidate", args.candidate)):
                result = run_child(path, args, strategy)
                rates[name].append(result["tokens_per_second"])
                outputs[name] = result["outputs"]
        base, candidate = statistics.median(rates["base"]), statistics.median(rates["candidate"])
        same = outputs["base"] == outputs["candidate"]
        print(f"| {strategy} | {base:.1f} | {candidate:.1f} | {candidate / base:.3f} | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
