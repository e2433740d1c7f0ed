"""The command line's surface, in-process: one flag style, help and defaults on every flag, a
description and example per subcommand, errors that name the subcommand."""

from __future__ import annotations

import argparse

import pytest

from layerskip.cli import build_parser, main
from layerskip.decoding.exit_criteria import make_criterion


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = sorted(subparsers())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_help_and_help_shows_defaults(command: str) -> None:
    parser = subparsers()[command]
    missing = [a.dest for a in parser._actions if not (a.help or "").strip()]
    assert not missing, f"{command}: flags without help: {missing}"
    text = parser.format_help()
    assert parser.description and "example:\n  layerskip " + command in text
    for action in parser._actions:
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) and action.dest != "help":
            shown = parser._get_formatter()._get_help_string(action)
            assert "default" in shown.lower(), f"{command} {action.option_strings[0]}: no default in {shown!r}"


def test_top_level_help_has_no_raw_markup(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "example:" in out


@pytest.mark.parametrize("argv, prefix", [
    (["generate", "--no_such_flag", "1"], "layerskip generate: error: unrecognized arguments: --no_such_flag 1"),
    (["generate", "--output_dir", "x"], "layerskip generate: error: unrecognized arguments: --output_dir x"),
    (["sweep", "--bogus"], "layerskip sweep: error: unrecognized arguments: --bogus"),
])
def test_unknown_flags_name_the_subcommand(capsys, argv, prefix) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(prefix) and err.count("\n") == 1


@pytest.mark.parametrize("command", ["self-generate", "train", "train-adapter", "benchmark", "eval"])
@pytest.mark.parametrize("spelling, expected", [([], False), (["--no_progress"], True), (["--no_progress", "True"], True),
                                                (["--no-progress", "False"], False)])
def test_no_progress_is_a_boolean_flag_everywhere(command, spelling, expected) -> None:
    required = {"self-generate": ["--output", "x.jsonl"], "eval": ["--tasks", "t"]}.get(command, [])
    assert build_parser().parse_args([command, *required, *spelling]).no_progress is expected


def test_model_flags_are_the_same_in_every_command() -> None:
    parsers = subparsers()
    seeds = {name: p.get_default("seed") for name, p in parsers.items() if p.get_default("seed") is not None}
    assert seeds["self-generate"] == seeds["generate"] == 42
    for name in ("generate", "benchmark", "sweep", "correctness", "tune", "eval", "self-generate"):
        flags = {s for a in parsers[name]._actions for s in a.option_strings}
        assert {"--model", "--device", "--dtype", "--quantize", "--seed"} <= flags, name


def test_output_spellings() -> None:
    parser = build_parser()
    assert parser.parse_args(["eval", "--tasks", "t", "--output_dir", "d"]).output_path == "d"  # upstream's name
    assert parser.parse_args(["eval", "--tasks", "t", "--output-path", "d"]).output_path == "d"
    for command in ("benchmark", "sweep", "correctness", "tune"):
        assert parser.parse_args([command, "--output-dir", "d"]).output_dir == "d"


def test_dynamic_early_exit_mode_none_is_no_dynamic_exit() -> None:
    parser = build_parser()
    assert parser.parse_args(["generate", "--dynamic_early_exit_mode", "none"]).criteria is None
    assert parser.parse_args(["generate", "--dynamic-early-exit-mode", "consistent_tokens"]).criteria == "consistent_tokens"


def test_consistent_tokens_is_the_forks_four_in_a_row() -> None:
    assert make_criterion("consistent_tokens").patience == 4
    assert make_criterion("token_repeat").patience == 3
    assert make_criterion("consistent_tokens", patience=2).patience == 2


def test_eval_states_its_greedy_default(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "sample (True) or greedy (False) (default: False)" in out
    assert build_parser().parse_args(["generate"]).sample is True
