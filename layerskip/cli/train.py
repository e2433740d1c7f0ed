"""``layerskip train``: the LayerSkip training recipe (see ``layerskip.training``)."""

from __future__ import annotations

import argparse

from layerskip.cli.arguments import add_config_flags, add_threads, config_values, subcommand
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
    "output_dir": "directory of checkpoints, the training log and the final model",
    "vocab_size": "tokenizer vocabulary size (from scratch)",
    "hidden_size": "model width (from scratch)",
    "num_layers": "decoder layers (from scratch)",
    "intermediate_size": "MLP width (from scratch)",
    "num_heads": "attention heads (from scratch)",
    "num_kv_heads": "key/value heads, GQA (from scratch)",
    "rope_theta": "rotary embedding base (from scratch)",
    "max_position_embeddings": "longest context (from scratch)",
    "seq_len": "tokens per training sequence",
    "batch_size": "sequences per step (per process)",
    "steps": "optimizer steps",
    "lr": "peak learning rate (AdamW, cosine schedule)",
    "min_lr_ratio": "final learning rate as a fraction of --lr",
    "warmup": "linear warm-up steps",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "gradient norm clipping",
    "dropout_shape": "layer dropout across depth D(l)",
    "dropout_time": "layer dropout over training S(t)",
    "scale_shape": "early-exit loss scale across layers",
    "curriculum": "which exits contribute to the loss at each step",
    "eval_every": "steps between held-out evaluations",
    "eval_batches": "held-out batches per evaluation",
    "eval_prompts": "prompts of the acceptance evaluation",
    "save_every": "steps between checkpoints",
    "seed": "random seed",
    "save_dtype": "dtype of the saved model",
}
#: the config field --model sets (a checkpoint to continue)
RENAMED = {"init_model": "model"}
CHOICES = {"dropout_shape": DEPTH_SHAPES, "dropout_time": TIME_SHAPES, "scale_shape": SCALE_SHAPES,
           "curriculum": CURRICULA, "save_dtype": ("bfloat16", "float32", "float16")}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subcommand(
        subparsers, "train", "train or continue training with layer dropout + early-exit loss",
        "Train a model from scratch, or continue a checkpoint (--model), with the LayerSkip recipe: layer dropout "
        "and the early-exit loss with a curriculum; checkpoints are crash-safe and resumable; torchrun-ready.",
        "layerskip train --corpus stdlib --output_dir runs/my-model --steps 1500 --p_max 0.2 --curriculum rotational")
    add_config_flags(parser, TrainConfig, HELP, CHOICES, RENAMED)
    add_threads(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from layerskip.training.trainer import Trainer

    final = Trainer(TrainConfig(**config_values(args, TrainConfig, RENAMED))).run(progress=not args.no_progress)
    print(f"saved {final}")
    return 0
