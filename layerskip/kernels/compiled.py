"""A compiled decoding step: the decoder-layer loop through ``torch.compile`` (inductor, frozen weights).

In eager PyTorch a one-token SmolLM2-135M step on a 2-core CPU spends about a third of its time
outside the linear layers: ~40 small ops per layer (norms, rotary, casts, cache writes, residual
adds, attention), each paying its dispatch (BENCHMARKS.md, "Engine speed"). ``compile_layers(model)``
sends ``LlamaForCausalLM.run_layers`` calls that decode — with a KV cache and no layer skipping — to
``torch.compile`` of ``model.layer_loop`` with inductor's ``freezing``: inductor fuses the
elementwise work of a layer into a few C++ (or, on a GPU, Triton) kernels, and with freezing it
treats the weights as constants and prepacks dense linear layers itself (oneDNN on a CPU, the
kernel ``layerskip.kernels.linear.PackedLinear`` calls eagerly); layers on the weight-streaming bf16
kernel (``StreamedLinear``) keep it, called from the compiled code as one registered op. The
token count and the cache capacity are symbolic (the model's widths are not), so one graph per
layer range ``(first, last)`` and its one-token specialisation serve every step and every
generation: autoregressive decoding compiles the full range, a self-speculative draft at exit E
``(0, E)`` and its verification ``(E, L)``; the prompt's prefill
goes through the multi-token graph of its range. Forwards without a cache (training) and layer-skip
drafts stay eager (``layer_loop`` is the same code).

Compiling costs tens of seconds per graph on a 2-core CPU the first time (inductor's on-disk cache
shortens later processes); it pays for long generations, which is why it is opt-in (``--compile``).
The compiled step computes what the eager one does, not bit for bit: its own fused kernels round
differently in the last bit; exactness (self-speculative output equals autoregressive output) is a
property of the compiled model against itself, checked like the eager one's.
"""

from __future__ import annotations

import inspect
import types
import weakref

import torch

from layerskip.model.cache import KVCache
from layerskip.model.config import ModelConfig
from layerskip.errors import LayerskipError
from layerskip.model.decoder import LlamaForCausalLM
from layerskip.files.storage import status
from layerskip.kernels.policy import compile_problem


#: models compiled in this process (names each one's code object)
_models_compiled = 0


def skips_guards() -> bool:
    """Whether this torch lets a call skip the guards that do not tell its cached graphs apart
    (``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``, torch 2.6+; a private knob, so it is
    feature-tested, not assumed): without it every compiled call checks every guard (~0.6 ms a step)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    try:
        return set_stance is not None and "skip_guard_eval_unsafe" in inspect.signature(set_stance).parameters
    except (TypeError, ValueError):
        return False


def require_compiler(device: torch.device, config: ModelConfig | None = None) -> None:
    """One error line when ``torch.compile`` cannot build kernels for ``device`` (and the model of
    ``config``: ``policy.compile_problem``)."""
    problem = compile_problem(device, config)
    if problem:
        raise LayerskipError(f"`compile`: {problem}")


def compile_layers(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """Decode through the compiled layer loop (module docstring); returns the model. Call it on a model
    prepared without oneDNN-prepacked layers (``prepare_for_inference(model, for_compile=True)``),
    whose weights do not change afterwards: they are frozen into the compiled graphs."""
    require_compiler(model.device, model.config)

    def loop(hidden: torch.Tensor, first: int, last: int, cache: KVCache, slots: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model.layer_loop(hidden, first, last, cache, slots, cos, sin, mask)

    # dynamo keeps compiled graphs per code object, and the guard-skipping fast path below checks only the
    # guards that tell one code object's graphs apart: each model gets a code object of its own, so one
    # model's graphs (weights frozen in) are never candidates for another model's call
    global _models_compiled
    _models_compiled += 1
    code = loop.__code__.replace(co_name=f"layer_loop_{_models_compiled}")
    loop = types.FunctionType(code, loop.__globals__, code.co_name, loop.__defaults__, loop.__closure__)
    compiled = torch.compile(loop)

    # per cache: the one-token calls (layer range, grad mode) that already ran with every guard checked;
    # None once dynamo refused to pick a graph from the differentiating guards alone on this cache
    checked: weakref.WeakKeyDictionary[KVCache, set[tuple[int, int, bool, bool]] | None] = weakref.WeakKeyDictionary()
    skipping = skips_guards()

    def layers(hidden: torch.Tensor, first: int, last: int, cache: KVCache, slots: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # symbolic token count and cache capacity, the model's widths static (kernels for its real
        # sizes). Marking costs ~20 us a tensor: a cache's buffers are marked once, and a one-token
        # step marks only the mask's capacity (a size 1 stays specialised: the one-token graph)
        if cache not in checked:
            for buffer in (*cache.keys, *cache.values):
                torch._dynamo.maybe_mark_dynamic(buffer, 2)
            checked[cache] = set() if skipping else None
        one = hidden.shape[1] == 1
        dims = ((mask, 3),) if one else ((hidden, 1), (slots, 0), (cos, 1), (sin, 1), (mask, 2), (mask, 3))
        for tensor, dim in dims:
            torch._dynamo.maybe_mark_dynamic(tensor, dim)
        # Checking every guard costs ~0.6 ms a call (~3000 guards, most on the model's modules). A
        # one-token call on a cache where the same call already passed them all has inputs of the same
        # shapes, dtypes and buffers, so only the guards that tell the cached graphs apart are checked.
        # Dynamo refuses (before running anything) when those do not settle which graph applies, e.g.
        # after another model's graphs joined the cache: then every guard is checked, from then on.
        kind = (first, last, torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        args = (hidden, first, last, cache, slots, cos, sin, mask)
        trusted = checked[cache]
        with torch._inductor.config.patch(freezing=True):  # (torch.compile's options= does not reach it)
            if one and trusted is not None and kind in trusted:
                try:
                    with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                        return compiled(*args)
                except RuntimeError as error:
                    if "skip_guard_eval_unsafe" not in str(error):
                        raise
                    trusted = checked[cache] = None
            out = compiled(*args)
        if one and trusted is not None:
            trusted.add(kind)
        return out

    if not skips_guards():
        status("layerskip: this torch cannot skip re-checking guards of compiled calls: every step checks "
               "all of them (~0.6 ms)")
    model.compiled_layers = layers
    return model
