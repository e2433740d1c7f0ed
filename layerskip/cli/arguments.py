"""Argument parsing shared by every subcommand.

Upstream's spellings work unchanged: underscores (``--exit_layer``), booleans written
``--sample True/False``, lists as several values (``--stop_words a b``). Dashes
(``--exit-layer``) are accepted too. Errors are one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error and no usage dump."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def add(parser: argparse.ArgumentParser | Any, name: str, **kwargs: Any) -> None:
    """Register ``--name`` (underscores) and its dashed alias."""
    flags = [f"--{name}"]
    if "_" in name:
        flags.append(f"--{name.replace('_', '-')}")
    if kwargs.get("type") is bool:
        kwargs["type"] = str2bool
        kwargs.setdefault("nargs", "?")
        kwargs.setdefault("const", True)
        kwargs.setdefault("metavar", "True|False")
    parser.add_argument(*flags, dest=name, **kwargs)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    add(group, "model", default=None, help="local checkpoint directory or Hugging Face hub id (default: the shipped model)")
    add(group, "device", default="auto", help="auto | cpu | cuda")
    add(group, "dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 where the hardware runs it well, else float32")
    add(group, "seed", type=int, default=42)
    add(group, "output_dir", default="./logs")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    add(group, "max_steps", type=int, default=512, help="maximum number of generated tokens")
    add(group, "generation_strategy", default="autoregressive", choices=["autoregressive", "self_speculative"])
    add(group, "exit_layer", type=int, default=None,
        help="draft exit layer (self_speculative, 1..L-1; default: the model's recommendation) "
        "or early-exit depth (autoregressive)")
    add(group, "num_speculations", type=int, default=None, help="draft tokens per verification (>= 1; default: the model's recommendation)")
    add(group, "sample", type=bool, default=True, help="sample (True) or greedy (False)")
    add(group, "temperature", type=float, default=0.6)
    add(group, "top_k", type=int, default=0, help="0 disables top-k")
    add(group, "top_p", type=float, default=0.9, help="1.0 disables top-p")
    add(group, "no_repeat_ngram_size", type=int, default=None)
    add(group, "stop_words", nargs="*", default=None, help="stop when any of these strings is generated")
    add(group, "stop_token_ids", type=int, nargs="*", default=None, help="extra token ids that end generation")
