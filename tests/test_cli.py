"""``layerskip generate``: JSON output, upstream flag spellings, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_one_line_error, run_cli

from layerskip.cli import main


def test_json_output_self_speculative_equals_autoregressive(tiny_dir, capsys):
    common = ["generate", "--model", str(tiny_dir), "--prompt", "def fib(n):", "--max_steps", "24",
              "--sample", "False", "--json", "True", "--dtype", "float32"]
    assert main(common) == 0
    ar = json.loads(capsys.readouterr().out)
    assert main([*common, "--generation_strategy", "self_speculative", "--exit_layer", "2", "--num_speculations", "4"]) == 0
    sp = json.loads(capsys.readouterr().out)
    assert ar["token_ids"] == sp["token_ids"] and ar["text"] == sp["text"]
    assert sp["model"] == str(Path(tiny_dir).resolve()) and sp["prompt"] == "def fib(n):"
    assert len(sp["token_ids"]) <= 24
    stats = sp["stats"]
    for key in ("generated_tokens", "acceptance_rate", "mean_tokens_per_verification", "draft_forwards",
                "verify_forwards", "exit_layer", "num_speculations", "time_to_first_token", "total_time",
                "time_per_token", "tokens_per_second"):
        assert key in stats
    assert stats["exit_layer"] == 2 and stats["num_speculations"] == 4


def test_dashed_flags_and_streamers(tiny_dir, capsys):
    args = ["generate", "--model", str(tiny_dir), "--prompt", "x = 1", "--max-steps", "12", "--sample", "False",
            "--generation-strategy", "self_speculative", "--exit-layer", "2", "--num-speculations", "3"]
    assert main([*args, "--streamer", "speculative"]) == 0
    out = capsys.readouterr()
    assert "\033[" in out.out and "tok/s" in out.err
    assert main([*args, "--streamer", "standard"]) == 0
    assert "\033[" not in capsys.readouterr().out


def test_interactive_mode_reads_prompts_until_eof(tiny_dir):
    proc = run_cli("generate", "--model", str(tiny_dir), "--max_steps", "5", "--sample", "True", "--json",
                   stdin="first prompt\n\nsecond \\\nprompt\nexit\nnever\n")
    assert proc.returncode == 0, proc.stderr
    objects = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["prompt"] for o in objects] == ["first prompt", "second \nprompt"]


@pytest.fixture
def broken_dirs(tiny_dir, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00\x01garbage")
    unsupported = tmp_path / "unsupported"
    shutil.copytree(tiny_dir, unsupported)
    cfg = json.loads((unsupported / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (unsupported / "config.json").write_text(json.dumps(cfg))
    pickle_only = tmp_path / "pickle_only"
    shutil.copytree(tiny_dir, pickle_only)
    (pickle_only / "model.safetensors").rename(pickle_only / "pytorch_model.bin")
    return {"corrupt": corrupt, "unsupported": unsupported, "pickle": pickle_only}


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--generation_strategy", "self_speculative", "--exit_layer", "4", "--num_speculations", "3"], "--exit_layer 4 outside 1..3"),
        (["--generation_strategy", "self_speculative", "--exit_layer", "0", "--num_speculations", "3"], "--exit_layer must be >= 1"),
        (["--generation_strategy", "self_speculative", "--exit_layer", "2", "--num_speculations", "0"], "--num_speculations must be >= 1"),
        (["--generation_strategy", "self_speculative"], "needs --exit_layer and --num_speculations"),
        (["--exit_layer", "9"], "outside 1..4"),
        (["--max_steps", "0"], "--max_steps must be >= 1"),
        (["--top_p", "0"], "top_p"),
        (["--sample", "maybe"], "expected True or False"),
        (["--generation_strategy", "nonsense"], "invalid choice"),
    ],
)
def test_bad_flags_give_one_line(tiny_dir, extra, needle):
    assert_one_line_error(run_cli("generate", "--model", str(tiny_dir), "--prompt", "hi", *extra), needle)


def test_bad_models_give_one_line(tmp_path, broken_dirs, tiny_dir):
    assert_one_line_error(run_cli("generate", "--model", str(tmp_path / "nope"), "--prompt", "hi"), "not found")
    assert_one_line_error(run_cli("generate", "--model", str(broken_dirs["corrupt"]), "--prompt", "hi"), "corrupt safetensors")
    assert_one_line_error(run_cli("generate", "--model", str(broken_dirs["unsupported"]), "--prompt", "hi"), "unsupported architecture")
    assert_one_line_error(run_cli("generate", "--model", str(broken_dirs["pickle"]), "--prompt", "hi"), "pickle")
    assert_one_line_error(run_cli("generate", "--model", str(tiny_dir), "--prompt", "  "), "empty prompt")


def test_unreachable_hub_gives_one_line(tmp_path):
    env_home = {"HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [sys.executable, "-m", "layerskip", "generate", "--model", "facebook/layerskip-llama3.2-1B", "--prompt", "hi"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1", **env_home),
    )
    assert_one_line_error(proc, "cannot download facebook/layerskip-llama3.2-1B")
