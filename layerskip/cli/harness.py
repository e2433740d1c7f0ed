"""What ``benchmark``, ``sweep`` and ``correctness`` share: model, samples, strategies, engines."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from layerskip.cli.settings import draft_config, generation_config, model_eos_ids
from layerskip.draft_config import DraftConfig
from layerskip.distributed import World, init_world
from layerskip.errors import LayerskipError
from layerskip.evaluation.datasets import Sample, load_samples
from layerskip.evaluation.strategies import LayerskipEngine, StrategySpec, TransformersEngine, validate_spec
from layerskip.generation import GenerationConfig
from layerskip.loading import LoadedModel, load


@dataclass
class Harness:
    loaded: LoadedModel
    samples: list[Sample]
    config: GenerationConfig
    world: World
    engines: dict[str, Any]

    def encode(self, text: str) -> list[int]:
        ids = self.loaded.tokenizer(text)["input_ids"]
        if not ids:
            raise LayerskipError("a prompt encodes to no tokens")
        return ids

    def ensure_engines(self, specs: list[StrategySpec]) -> None:
        for spec in specs:
            validate_spec(spec, self.loaded.model.num_layers)
            if spec.engine == "transformers" and "transformers" not in self.engines:
                m = self.loaded.model
                self.engines["transformers"] = TransformersEngine(self.loaded.path, m.device, m.dtype, self.loaded.tokenizer)


def prepare(args: argparse.Namespace) -> Harness:
    if args.num_samples is not None and args.num_samples < 1:
        raise LayerskipError("--num_samples must be >= 1")
    samples = load_samples(args.dataset, args.data_path, args.num_samples, args.n_shot, args.template, args.seed,
                           args.random_shuffle, args.prompt_field, args.response_field)
    world = init_world()
    loaded = load(args.model, args.device, args.dtype, args.quantize)
    config = generation_config(args, model_eos_ids(loaded.model, loaded.tokenizer))
    return Harness(loaded, samples, config, world, {"layerskip": LayerskipEngine(loaded, args.seed)})


def default_draft(args: argparse.Namespace, loaded: LoadedModel) -> DraftConfig:
    """The draft the flags describe (--draft_config, --exit_layer, ...), else the model's recommendation."""
    return draft_config(argparse.Namespace(**{**vars(args), "generation_strategy": "self_speculative"}), loaded.recommended)
