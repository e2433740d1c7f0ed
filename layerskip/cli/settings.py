"""Turn parsed arguments into validated library objects (generation config, drafter, depth)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from layerskip.drafting import Drafter, EarlyExitDrafter
from layerskip.errors import LayerskipError
from layerskip.generation import GenerationConfig
from layerskip.model import LlamaForCausalLM
from layerskip.sampling import SamplingConfig


@dataclass(frozen=True)
class Strategy:
    """A drafter (None: autoregressive) and the target depth."""

    drafter: Drafter | None
    depth: int


def model_eos_ids(model: LlamaForCausalLM, tokenizer: object) -> tuple[int, ...]:
    ids = list(model.config.eos_token_ids)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and eos not in ids:
        ids.append(int(eos))
    return tuple(ids)


def generation_config(args: argparse.Namespace, eos_ids: tuple[int, ...]) -> GenerationConfig:
    if args.max_steps < 1:
        raise LayerskipError(f"--max_steps must be >= 1, got {args.max_steps}")
    try:
        sampling = SamplingConfig(
            sample=args.sample,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            no_repeat_ngram_size=args.no_repeat_ngram_size or 0,
        )
    except ValueError as exc:
        raise LayerskipError(str(exc)) from None
    stop_ids = tuple(dict.fromkeys([*eos_ids, *(args.stop_token_ids or [])]))
    stop_words = tuple(w for w in (args.stop_words or []) if w)
    return GenerationConfig(args.max_steps, sampling, stop_ids, stop_words, args.seed)


def strategy(args: argparse.Namespace, model: LlamaForCausalLM, recommended: dict[str, int] | None = None) -> Strategy:
    """The drafter and depth the flags ask for; self_speculative falls back on the checkpoint's
    recommended ``exit_layer`` / ``num_speculations`` when a flag is omitted."""
    layers = model.num_layers
    exit_layer, k = args.exit_layer, args.num_speculations
    if args.generation_strategy == "self_speculative" and recommended:
        exit_layer = recommended.get("exit_layer") if exit_layer is None else exit_layer
        k = recommended.get("num_speculations") if k is None else k
    if args.generation_strategy == "autoregressive":
        if exit_layer is None or exit_layer < 0:  # upstream's -1 means full depth
            return Strategy(None, layers)
        if not 1 <= exit_layer <= layers:
            raise LayerskipError(f"--exit_layer {exit_layer} outside 1..{layers} for this {layers}-layer model")
        return Strategy(None, exit_layer)
    if exit_layer is None or k is None:
        raise LayerskipError(
            "self_speculative decoding needs --exit_layer and --num_speculations (this model recommends none)"
        )
    if not 1 <= exit_layer <= layers - 1:
        raise LayerskipError(f"--exit_layer {exit_layer} outside 1..{layers - 1} for this {layers}-layer model")
    if k < 1:
        raise LayerskipError(f"--num_speculations must be >= 1, got {k}")
    return Strategy(EarlyExitDrafter(exit_layer, k), layers)
