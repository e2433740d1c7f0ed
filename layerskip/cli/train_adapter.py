"""``layerskip train-adapter``: train a draft adapter on a frozen checkpoint (``layerskip.training.adapter_trainer``)."""

from __future__ import annotations

import argparse

from layerskip.model.adapter import ARCHITECTURES
from layerskip.cli.arguments import add_config_flags, add_threads, config_values, subcommand
from layerskip.training.adapter_trainer import INIT_CHOICES, AdapterTrainConfig

HELP = {
    "model": "the frozen base: a checkpoint directory, .gguf file, hub id or fetched name (default: the shipped model)",
    "exit_layer": "the draft runs layers 0..E-1 of the base, then the adapter",
    "corpus": "training text: 'stdlib', a directory, a glob, or a .jsonl file (e.g. from layerskip self-generate)",
    "text_field": "the text field of JSONL records",
    "architecture": "attention: Kangaroo's attention block; decoder_layer: attention + the base's MLP width",
    "init": "initialise the adapter from decoder layer E, from the last layer, or randomly",
    "init_from": "start from this trained adapter directory of the same base, exit layer and architecture (overrides --init)",
    "max_tokens": "training tokens whose frozen features are extracted (the data budget)",
    "top_k": "target tokens kept per position from the full model's distribution",
    "draft_vocab": "train (and draft) over the N most frequent corpus tokens (FR-Spec); 0: the full vocabulary",
    "eval_every": "steps between checkpoints and evaluations (held-out agreement and acceptance)",
    "eval_prompts": "held-out prompts for the acceptance evaluation",
    "eval_tokens": "tokens generated per evaluation prompt",
    "num_speculations": "k of the acceptance evaluation",
}
CHOICES = {"architecture": ARCHITECTURES, "init": INIT_CHOICES}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subcommand(
        subparsers, "train-adapter", "train a draft adapter for a frozen checkpoint (Kangaroo); resumable, torchrun-ready",
        "Train a small draft adapter between layer E of a frozen model and its own head; the model's output is "
        "unchanged (verification is the full model).",
        "layerskip train-adapter --model smollm2-135m-instruct --exit_layer 4 --output_dir runs/adapter")
    add_config_flags(parser, AdapterTrainConfig, HELP, CHOICES)
    add_threads(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from layerskip.training.adapter_trainer import AdapterTrainer

    config = AdapterTrainConfig(**config_values(args, AdapterTrainConfig))
    trainer = AdapterTrainer(config)
    final = trainer.run(progress=not args.no_progress)
    if trainer.world.is_main:
        print(final)
    return 0
