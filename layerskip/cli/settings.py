"""Turn parsed arguments into library objects: the generation config and the decoding ``Strategy``."""

from __future__ import annotations

import argparse

from layerskip.drafters.config import DraftConfig, load_draft_config, parse_skip_layers
from layerskip.errors import LayerskipError
from layerskip.decoding.settings import GenerationConfig
from layerskip.checkpoints.loading import LoadedModel
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.strategy import Strategy


def generation_config(args: argparse.Namespace, loaded: LoadedModel) -> GenerationConfig:
    """The generation settings of the flags for a loaded model: its stop tokens plus ``--stop_token_ids``
    (each checked against its vocabulary)."""
    vocab = loaded.model.config.vocab_size
    outside = [i for i in args.stop_token_ids or [] if not 0 <= i < vocab]
    if outside:
        raise LayerskipError(f"--stop_token_ids {outside[0]} is outside the vocabulary 0..{vocab - 1}")
    eos_ids = loaded.eos_token_ids
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


def draft_config(args: argparse.Namespace, recommended: dict | None = None, speculative: bool | None = None) -> DraftConfig:
    """The draft settings: the --draft_config file, else the model's recommendation when ``speculative``
    (default: whether the flags ask for self_speculative), then the flags on top."""
    if speculative is None:
        speculative = args.generation_strategy == "self_speculative"
    if getattr(args, "draft_config", None):
        base = load_draft_config(args.draft_config)
    elif speculative and recommended:
        base = DraftConfig.from_dict(recommended, "the model's recommended setting")
    else:
        base = DraftConfig()
    exit_layer = None if args.exit_layer == -1 else args.exit_layer  # upstream's -1: unset (other negatives
    k = None if args.num_speculations == -1 else args.num_speculations  # are refused by check_arguments)
    skips = parse_skip_layers(args.skip_layers) if getattr(args, "skip_layers", None) else {}
    return base.merged(
        exit_layer=exit_layer, num_speculations=k, criteria=args.criteria, threshold=args.criteria_threshold,
        patience=args.criteria_patience, temperature=args.criteria_temperature, high=args.criteria_high,
        low=args.criteria_low, layer_skip_proportion=args.layer_skip_proportion, draft_length=args.draft_length,
        confidence_threshold=args.confidence_threshold, draft_adapter=args.draft_adapter,
        draft_vocab=args.draft_vocab, draft=args.draft, prompt_lookup_max_ngram=args.prompt_lookup_max_ngram,
        prompt_lookup_min_ngram=args.prompt_lookup_min_ngram,
        prompt_lookup_num_tokens=getattr(args, "prompt_lookup_num_tokens", None),
        prompt_lookup_factor=getattr(args, "prompt_lookup_factor", None),
        draft_control=getattr(args, "draft_control", None), **skips,
    )


def strategy(args: argparse.Namespace, recommended: dict | None = None) -> Strategy:
    """The strategy the flags ask for; self_speculative falls back on the checkpoint's
    recommended ``exit_layer`` / ``num_speculations`` when a flag is omitted."""
    return Strategy("layerskip", args.generation_strategy, draft_config(args, recommended))


