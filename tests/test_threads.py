"""--threads and LAYERSKIP_THREADS (layerskip.kernels.threads): every command that runs a model takes it, it sets
torch's (and the native kernels') threads before any work, and bad values are one error line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from layerskip.kernels import threads
from layerskip.cli import main
from layerskip.errors import LayerskipError

MODEL_COMMANDS = ["generate", "benchmark", "eval", "sweep", "correctness", "tune", "self-generate", "train-adapter", "train"]
#: the flags each command needs besides --threads to get past parsing
REQUIRED = {"self-generate": ["--output", "{tmp}/x.jsonl"], "eval": ["--tasks", "t"]}


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_invalid_threads_are_one_error_line_before_any_work(command, value, tmp_path, capsys, restore_threads) -> None:
    argv = [command, *(a.format(tmp=tmp_path) for a in REQUIRED.get(command, [])), "--threads", value]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"layerskip {command}: error: --threads must be") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_threads_is_set_before_the_command_runs(command, tmp_path, monkeypatch, restore_threads) -> None:
    seen: list[int] = []

    def handler(args) -> int:
        seen.append(torch.get_num_threads())
        return 0

    from layerskip import cli

    parser_builder = cli.build_parser

    def build_parser():
        parser = parser_builder()
        subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        subparsers.choices[command].set_defaults(handler=handler)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_parser)
    argv = [command, *(a.format(tmp=tmp_path) for a in REQUIRED.get(command, [])), "--threads", "1"]
    assert main(argv) == 0 and seen == [1]


def test_the_default_is_the_cpus_this_process_may_run_on(monkeypatch) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert threads.default_threads() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share them
    assert threads.default_threads() == 1
    monkeypatch.setenv(threads.ENV, "7")
    assert threads.default_threads() == 7
    monkeypatch.setenv(threads.ENV, "0")
    with pytest.raises(LayerskipError, match="LAYERSKIP_THREADS must be in 1..1024, got 0"):
        threads.default_threads()


def test_a_pinned_process_defaults_to_its_cpus_and_env_reports_them(tmp_path) -> None:
    """Under taskset (one CPU) the default is one thread; ``layerskip env --json`` says so."""
    if not hasattr(__import__("os"), "sched_setaffinity"):
        pytest.skip("no CPU affinity here")
    code = ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from layerskip.cli import main; sys.exit(main(['env', '--json', 'True']))")
    env = {k: v for k, v in __import__("os").environ.items() if k != threads.ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["threads"].startswith("1 (CPUs this process may run on: 1;")
    assert {"native kernels", "dtype auto", "torch.compile", "torch", "cpu"} <= set(facts)
