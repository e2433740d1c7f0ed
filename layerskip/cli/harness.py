"""What ``benchmark``, ``sweep`` and ``correctness`` share: model, samples, strategies, engines."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Sequence

from layerskip.decoding.chat import Conversation, require_chat_template
from layerskip.cli.settings import generation_config
from layerskip.training.distributed import World, init_world
from layerskip.errors import LayerskipError
from layerskip.evaluation.datasets import Sample, load_samples
from layerskip.evaluation.engines import LayerskipEngine, TransformersEngine
from layerskip.decoding.settings import GenerationConfig
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
        return self.encode_turns([text], [])

    def encode_turns(self, turns: Sequence[str], answers: Sequence[str]) -> list[int]:
        """Prompt ids of the next answer after user ``turns`` and the model's ``answers`` to all but the
        last: through the chat template (``chat``), else the plain transcript, each answer straight
        after its turn and a blank line before the next turn."""
        tokenizer = self.loaded.tokenizer
        if self.chat:
            conversation = Conversation(tokenizer)
            for turn, answer in zip(turns, answers):
                conversation.ask(turn)
                conversation.answer(answer)
            ids = conversation.ask(turns[-1])
        else:
            text = "".join(f"{turn}{answer}\n\n" for turn, answer in zip(turns, answers)) + turns[-1]
            ids = tokenizer(text)["input_ids"]
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
    if getattr(args, "batch_size", 1) < 1:
        raise LayerskipError(f"--batch_size must be >= 1, got {args.batch_size}")
    samples = load_samples(args.dataset, args.data_path, args.num_samples, args.n_shot, args.template, args.seed,
                           args.random_shuffle, args.prompt_field, args.response_field, args.categories)
    world = init_world()
    loaded = load(args.model, args.device, args.dtype, args.quantize, compile=args.compile)
    if args.apply_chat_template:
        require_chat_template(loaded.tokenizer)
    chat = args.apply_chat_template or (args.dataset == "spec_bench" and bool(getattr(loaded.tokenizer, "chat_template", None)))
    config = generation_config(args, loaded)
    harness = Harness(loaded, samples, config, world, {"layerskip": LayerskipEngine(loaded, args.seed)}, chat)
    # every conversation at its longest (each earlier answer max_steps tokens), before any generation
    longest = max((len(harness.encode_turns(s.turns, [""] * (len(s.turns) - 1))) + (len(s.turns) - 1) * config.max_steps
                   for s in samples), default=0)
    check_fits(loaded.model, longest, config.max_steps)
    return harness

