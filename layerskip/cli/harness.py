"""What ``benchmark``, ``sweep`` and ``correctness`` share: model, samples, strategies, engines."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from layerskip.decoding.chat import require_chat_template, single_turn
from layerskip.cli.settings import generation_config
from layerskip.training.distributed import World, init_world
from layerskip.errors import LayerskipError
from layerskip.evaluation.datasets import Sample, load_samples
from layerskip.evaluation.engines import LayerskipEngine, TransformersEngine
from layerskip.decoding.loop import GenerationConfig
from layerskip.decoding.limits import check_fits
from layerskip.checkpoints.loading import LoadedModel, load
from layerskip.decoding.strategy import Strategy
from layerskip.validation import writable_dir


@dataclass
class Harness:
    loaded: LoadedModel
    samples: list[Sample]
    config: GenerationConfig
    world: World
    engines: dict[str, Any]
    chat: bool = False

    def encode(self, text: str) -> list[int]:
        """Prompt ids of a dataset prompt: plain, or as one user turn of the chat template (``chat``)."""
        tokenizer = self.loaded.tokenizer
        ids = single_turn(tokenizer, text) if self.chat else tokenizer(text)["input_ids"]
        if not ids:
            raise LayerskipError("a prompt encodes to no tokens")
        return ids

    def ensure_engines(self, specs: list[Strategy]) -> None:
        for spec in specs:
            spec.validate(self.loaded.model.num_layers)
            if spec.engine == "transformers" and "transformers" not in self.engines:
                m = self.loaded.model
                self.engines["transformers"] = TransformersEngine(self.loaded.path, m.device, m.dtype, self.loaded.tokenizer)


def prepare(args: argparse.Namespace) -> Harness:
    writable_dir(args.output_dir, "--output_dir")
    samples = load_samples(args.dataset, args.data_path, args.num_samples, args.n_shot, args.template, args.seed,
                           args.random_shuffle, args.prompt_field, args.response_field)
    world = init_world()
    loaded = load(args.model, args.device, args.dtype, args.quantize, compile=args.compile)
    if args.apply_chat_template:
        require_chat_template(loaded.tokenizer)
    config = generation_config(args, loaded.model, loaded.tokenizer)
    harness = Harness(loaded, samples, config, world, {"layerskip": LayerskipEngine(loaded, args.seed)},
                      args.apply_chat_template)
    longest = max((len(harness.encode(s.prompt)) for s in samples), default=0)
    check_fits(loaded.model, longest, config.max_steps)  # every prompt, before any generation
    return harness

