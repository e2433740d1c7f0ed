"""Roofline of decoding on this machine: how close a step is to the memory-bandwidth bound.

Measures the read bandwidth (a sum over a large float32 buffer), the weight bytes one decoding step
reads for a checkpoint, dtype and quantization (every parameter once, the embedding row aside), the
bound ``bandwidth / bytes`` in tokens/s, the measured one-token step, the cost of verifying
T = 2..9 tokens relative to one token (the figure that decides self-speculative speed-ups), and the
cost of a one-token draft step (layers 0..E-1 + the LM head) at each exit layer E relative to a full
step. Every figure is the minimum over ``--repeats`` timings; prints a table and writes JSON.

``--batch_sizes 1 2 4 8 16`` adds, per kernel and batch size B, the bytes one step of B rows reads
(the weights once, whatever B, plus the KV cache of B rows at ``--context`` cached tokens), the bound
in steps/s and in aggregate tokens/s (B tokens a step), the measured one-token step of B rows, its
aggregate tokens/s and fraction of the bound, and the verification of T = 2..9 tokens a row relative
to that step (JSON key ``batch``). Without it the output is the single-row figures alone, as before.

    python benchmarks/roofline.py --model DIR --dtype float32 --out roofline.json
    python benchmarks/roofline.py --model DIR --dtype bfloat16 --quantize int8
    python benchmarks/roofline.py --model DIR --dtype bfloat16 --kernels streamed packed compiled --exits 4
    python benchmarks/roofline.py --model DIR --dtype bfloat16 --batch_sizes 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from layerskip.model.cache import KVCache
from layerskip.kernels.compiled import compile_layers
from layerskip.kernels.linear import PackedLinear, StreamedLinear, prepare_for_inference
from layerskip.kernels.policy import KERNELS
from layerskip.checkpoints.loading import default_model_path, load, load_model
from layerskip.model.decoder import LlamaForCausalLM


def best_time(fn: Callable[[], object], repeats: int, inner: int) -> float:
    """Minimum over ``repeats`` of the mean seconds of ``inner`` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - start) / inner)
    return best


def read_bandwidth(mib: int, repeats: int) -> float:
    """Bytes/s of reading a ``mib`` MiB float32 buffer once (``sum``). Random values: a buffer of
    identical pages can be merged by the host (KSM) and then reads from cache (a buffer of ones
    measured 50 GB/s after 20 s, random values 32 GB/s, on the 2-core Zen 5 of 2026-12-02)."""
    buffer = torch.rand(mib * 2**18)
    return buffer.numel() * 4 / best_time(lambda: buffer.sum(), repeats, 3)


def weight_bytes(model: LlamaForCausalLM) -> int:
    """Bytes of parameters and buffers read by one full step (shared tensors once; the input
    embedding counts one row unless it is tied to the LM head, which reads it whole)."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor is not None:
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    embedding = model.model.embed_tokens.weight
    for module in model.modules():  # a packed kernel reads its packed copy, not the weight it keeps
        if isinstance(module, (PackedLinear, StreamedLinear)):
            if hasattr(module, "weight"):
                seen.pop(module.weight.data_ptr(), None)
            if isinstance(module, PackedLinear):  # opaque oneDNN tensor, outside parameters and buffers
                seen[id(module)] = module.out_features * module.in_features * module.packed.element_size()
    head = model.lm_head
    if not (isinstance(head, torch.nn.Linear) and head.weight.data_ptr() == embedding.data_ptr()):
        seen[embedding.data_ptr()] = embedding.shape[1] * embedding.element_size()  # one row of a lookup
    return sum(seen.values())


def kv_bytes(model: LlamaForCausalLM, batch: int, context: int) -> int:
    """Bytes of keys and values of ``batch`` rows of ``context`` cached tokens each, every layer, in
    the cache's dtype (``model.attention_dtype``): what the attention of one step reads."""
    c = model.config
    per_token = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * model.attention_dtype.itemsize
    return batch * context * per_token


@torch.no_grad()
def step_time(model: LlamaForCausalLM, tokens: int, last: int, context: int, repeats: int, inner: int,
              batch: int = 1) -> float:
    """Seconds of one step of ``tokens`` new tokens in each of ``batch`` rows (hidden ``[batch, tokens,
    dim]``, one start slot for every row) through layers ``0..last-1`` and the LM head, after
    ``context`` cached tokens a row (the cache is rolled back after each call)."""
    cache = KVCache(model.config, batch, context + tokens, model.device, model.attention_dtype)
    ids = torch.zeros(batch, context, dtype=torch.long, device=model.device)
    model.run_layers(model.embed(ids), 0, model.num_layers, cache, 0)
    new = torch.ones(batch, tokens, dtype=torch.long, device=model.device)

    def step() -> None:
        model.unembed(model.run_layers(model.embed(new), 0, last, cache, context))
    
    return best_time(step, repeats, inner)


def roofline(model: LlamaForCausalLM, bandwidth: float, repeats: int, inner: int, context: int,
             exits: list[int] | None = None) -> dict:
    """The roofline record of ``model`` (see the module docstring for every field); draft steps at
    ``exits`` (default: every exit layer)."""
    nbytes = weight_bytes(model)
    one = step_time(model, 1, model.num_layers, context, repeats, inner)
    verify = {t: step_time(model, t, model.num_layers, context, repeats, inner) / one for t in range(2, 10)}
    draft = {e: step_time(model, 1, e, context, repeats, inner) / one for e in exits or range(1, model.num_layers)}
    bound = bandwidth / nbytes
    return {
        "weight_bytes": nbytes,
        "bound_tokens_per_s": bound,
        "step_s": one,
        "tokens_per_s": 1 / one,
        "fraction_of_bound": 1 / one / bound,
        "verify_relative": {str(t): r for t, r in verify.items()},
        "draft_relative": {str(e): r for e, r in draft.items()},
    }


def batch_roofline(model: LlamaForCausalLM, bandwidth: float, batch_sizes: list[int], repeats: int, inner: int,
                   context: int, verify_tokens: range | list[int] = range(2, 10)) -> dict:
    """Per batch size B (keys ``str(B)``): bytes a one-token step of B rows reads (weights once plus
    the KV cache of B rows at ``context`` tokens), the bandwidth bound in steps/s and aggregate
    tokens/s, the measured step, its aggregate tokens/s and fraction of the bound, and the step of
    T = ``verify_tokens`` tokens a row relative to the one-token step at the same B."""
    weights = weight_bytes(model)
    out = {}
    for b in batch_sizes:
        kv = kv_bytes(model, b, context)
        nbytes = weights + kv
        bound_steps = bandwidth / nbytes
        one = step_time(model, 1, model.num_layers, context, repeats, inner, batch=b)
        verify = {t: step_time(model, t, model.num_layers, context, repeats, inner, batch=b) / one
                  for t in verify_tokens}
        out[str(b)] = {
            "batch_size": b,
            "weight_bytes": weights,
            "kv_bytes": kv,
            "bytes_per_step": nbytes,
            "bound_steps_per_s": bound_steps,
            "bound_tokens_per_s": b * bound_steps,
            "step_s": one,
            "tokens_per_s": b / one,
            "fraction_of_bound": (1 / one) / bound_steps,
            "verify_relative": {str(t): r for t, r in verify.items()},
        }
    return out


def batch_table(rows: dict, kernel: str, context: int) -> str:
    """The ``batch_roofline`` record as a table, one row per batch size."""
    first = next(iter(rows.values()))
    ts = list(first["verify_relative"])
    lines = [f"kernel {kernel}, batch of B rows, {context} cached tokens a row "
             f"(weights {first['weight_bytes'] / 1e6:.1f} MB once a step + KV cache)",
             f"{'B':>3} {'MB/step':>8} {'bound tok/s':>11} {'ms/step':>8} {'tok/s':>8} {'% bound':>7}  "
             + " ".join(f"{'T=' + t:>5}" for t in ts)]
    for r in rows.values():
        lines.append(f"{r['batch_size']:>3} {r['bytes_per_step'] / 1e6:8.1f} {r['bound_tokens_per_s']:11.1f} "
                     f"{r['step_s'] * 1e3:8.2f} {r['tokens_per_s']:8.1f} {100 * r['fraction_of_bound']:7.0f}  "
                     + " ".join(f"{r['verify_relative'][t]:5.2f}" for t in ts))
    return "\n".join(lines)


def table(record: dict, kernel: str) -> str:
    r = record["results"][kernel]
    lines = [
        f"kernel              {kernel}",
        f"read bandwidth      {record['bandwidth_bytes_per_s'] / 1e9:8.1f} GB/s",
        f"weight bytes/token  {r['weight_bytes'] / 1e6:8.1f} MB  ({record['dtype']}, quantize {record['quantize']})",
        f"bound               {r['bound_tokens_per_s']:8.1f} tokens/s",
        f"1-token step        {r['step_s'] * 1e3:8.2f} ms = {r['tokens_per_s']:.1f} tokens/s ({100 * r['fraction_of_bound']:.0f} % of bound)",
        "verify T tokens / 1 " + " ".join(f"T={t}:{v:.2f}" for t, v in r["verify_relative"].items()),
        "draft at exit E / 1 " + " ".join(f"E={e}:{v:.2f}" for e, v in r["draft_relative"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--quantize", default="none", choices=["none", "int8"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--context", type=int, default=64, help="cached tokens before the timed step")
    parser.add_argument("--repeats", type=int, default=3, help="timings per figure (the minimum is kept)")
    parser.add_argument("--inner", type=int, default=5, help="calls per timing")
    parser.add_argument("--bandwidth_mib", type=int, default=1024, help="buffer size of the bandwidth measurement")
    parser.add_argument("--kernels", nargs="+", default=["auto", "packed"], choices=[*KERNELS, "compiled"],
                        help="kernels to measure side by side (layerskip.kernels.linear): auto = the engine's choice, "
                             "streamed = layerskip's bf16 weight-streaming kernel, packed = oneDNN prepacked, "
                             "dense = F.linear, compiled = auto with the layer loop through torch.compile "
                             "(layerskip.kernels.compiled, --compile)")
    parser.add_argument("--exits", type=int, nargs="+", default=None,
                        help="exit layers of the draft-step figures (default: all; each is one more compile for 'compiled')")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None,
                        help="batch sizes of the batched figures (JSON key 'batch'; default: 1 row only, the "
                             "single-row figures as before, no batched table)")
    parser.add_argument("--out", default="roofline.json")
    args = parser.parse_args(argv)
    loaded = load(args.model or str(default_model_path()), args.device, args.dtype, args.quantize, prepare=False)
    bandwidth = read_bandwidth(args.bandwidth_mib, args.repeats)
    results = {}
    batch = {}
    for kernel in args.kernels:
        model = load_model(loaded.path, loaded.model.device, loaded.model.dtype)
        prepare_for_inference(model, args.quantize, "auto" if kernel == "compiled" else kernel,
                              for_compile=kernel == "compiled")
        if kernel == "compiled":
            compile_layers(model)
        results[kernel] = roofline(model, bandwidth, args.repeats, args.inner, args.context, args.exits)
        if args.batch_sizes:
            batch[kernel] = batch_roofline(model, bandwidth, args.batch_sizes, args.repeats, args.inner, args.context)
        del model
    record = {
        "model": str(loaded.path),
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "quantize": args.quantize,
        "threads": torch.get_num_threads(),
        "bandwidth_bytes_per_s": bandwidth,
        "results": results,
    }
    if args.batch_sizes:
        record["context"] = args.context
        record["batch"] = batch
    print("\n\n".join(table(record, kernel) for kernel in args.kernels))
    if len(args.kernels) == 2:
        a, b = (results[k] for k in args.kernels)
        print(f"\n{args.kernels[0]} vs {args.kernels[1]}: 1-token step {b['step_s'] / a['step_s']:.2f}x faster, "
              f"verify T=5 / 1 {a['verify_relative']['5']:.2f} vs {b['verify_relative']['5']:.2f}")
    if args.batch_sizes:
        print("\n" + "\n\n".join(batch_table(batch[kernel], kernel, args.context) for kernel in args.kernels))
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
