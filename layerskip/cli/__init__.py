"""The ``layerskip`` command line: one parser, one subcommand per job."""

from __future__ import annotations

import argparse
import sys

from layerskip import __version__
from layerskip.cli import benchmark, correctness, env, evaluate, fetch, generate, self_generate, serve, sweep, train, train_adapter, tune
from layerskip.cli.arguments import ArgumentParser, HelpFormatter, SubcommandParser, flag_names
from layerskip.errors import LayerskipError, named_as_flags
from layerskip.kernels.threads import check_threads, set_threads
from layerskip.cli.checks import check_arguments


DESCRIPTION = """LayerSkip early-exit inference and self-speculative decoding: generate text, benchmark,
sweep, check correctness, tune and evaluate strategies, train models and draft adapters.
Upstream LayerSkip's flag spellings work unchanged (--exit_layer 4, --sample False)."""

EPILOG = """example:
  layerskip generate --generation_strategy self_speculative --prompt 'def fib(n):'
Run 'layerskip COMMAND --help' for a command's flags and their defaults."""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="layerskip", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"layerskip {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=SubcommandParser, metavar="COMMAND")
    generate.register(subparsers)
    train.register(subparsers)
    train_adapter.register(subparsers)
    self_generate.register(subparsers)
    benchmark.register(subparsers)
    sweep.register(subparsers)
    correctness.register(subparsers)
    tune.register(subparsers)
    evaluate.register(subparsers)
    fetch.register(subparsers)
    env.register(subparsers)
    serve.register(subparsers)
    return parser


def flags_of(command: str) -> dict[str, str]:
    """Setting name -> the flag that sets it, for ``layerskip COMMAND``."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return flag_names(subparsers.choices[command])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        if hasattr(args, "threads"):
            set_threads(None if args.threads is None else check_threads(args.threads, "--threads"))
        return int(args.handler(args) or 0)
    except LayerskipError as exc:
        sys.stderr.write(f"layerskip {args.command}: error: {named_as_flags(str(exc), flags_of(args.command))}\n")
        return 1
    except UnicodeDecodeError as exc:  # input read as text (stdin, a data file) that is not UTF-8
        sys.stderr.write(f"layerskip {args.command}: error: input is not valid UTF-8 ({exc.reason} at byte {exc.start})\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
