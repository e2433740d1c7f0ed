"""``layerskip train``: the LayerSkip training recipe (see ``layerskip.training``)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from layerskip.cli.arguments import add
from layerskip.training.early_exit_loss import CURRICULA, SCALE_SHAPES
from layerskip.training.layer_dropout import DEPTH_SHAPES, TIME_SHAPES
from layerskip.training.trainer import TrainConfig

HELP = {
    "corpus": "'stdlib' (the Python standard library), a directory, a glob, or a .jsonl file",
    "text_field": "the text field of JSONL records",
    "init_model": "start from this checkpoint (continual pretraining / finetuning); default: from scratch",
    "p_max": "maximum layer dropout rate",
    "e_scale": "early-exit loss scale e_scale",
    "rotation": "R of the rotational curriculum",
    "grad_accum": "gradient accumulation steps",
    "distill": "self-distillation weight at the early exits: (1-a)*CE + a*KL(last layer || exit)",
    "bf16": "bf16 autocast",
}
CHOICES = {"dropout_shape": DEPTH_SHAPES, "dropout_time": TIME_SHAPES, "scale_shape": SCALE_SHAPES,
           "curriculum": CURRICULA, "save_dtype": ("bfloat16", "float32", "float16")}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train or continue training with layer dropout + early-exit loss")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        kind = {"int": int, "float": float, "bool": bool}.get(str(f.type), str)
        name = "model" if f.name == "init_model" else f.name
        add(parser, name, type=kind, default=default, choices=CHOICES.get(f.name), help=HELP.get(f.name))
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from layerskip.training.trainer import Trainer

    values = {f.name: getattr(args, "model" if f.name == "init_model" else f.name) for f in fields(TrainConfig)}
    final = Trainer(TrainConfig(**values)).run(progress=not args.no_progress)
    print(f"saved {final}")
    return 0
