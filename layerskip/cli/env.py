"""``layerskip env``: what this machine runs a model with, and the native kernels' build."""

from __future__ import annotations

import argparse
import json

from layerskip.cli.arguments import add, add_threads, subcommand


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subcommand(
        subparsers, "env", "show what this machine uses: native kernels (built or why not), dtype auto, threads, --compile",
        "Print what layerskip uses on this machine: the native CPU kernels (built, or why not, and what runs "
        "instead), what --dtype auto picks for a model, the threads, whether --compile can work, and versions. "
        "Builds the native kernels if they are not built yet.",
        "layerskip env --model smollm2-135m-instruct")
    add(parser, "model", default=None, help="the model whose --dtype auto choice is shown (default: the shipped model)")
    add(parser, "device", default="auto", help="auto | cpu | cuda")
    add(parser, "rebuild", type=bool, default=False, help="build the native kernels afresh first (replacing this machine's build)")
    add(parser, "json", type=bool, default=False, help="print one JSON object instead of the table")
    add_threads(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from layerskip.cli.environment import report

    facts = report(args.model, args.device, rebuild=args.rebuild)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    width = max(len(name) for name in facts)
    for name, value in facts.items():
        print(f"{name:<{width}}  {value}")
    return 0
