"""Draft strategies through the command line: generate, correctness for every criterion, tune."""

from __future__ import annotations

import json

import pytest
from helpers import assert_one_line_error, run_cli

from layerskip.cli import main
from layerskip.drafters.config import DraftConfig
from layerskip.decoding.exit_criteria import ALIASES, CRITERIA

COMMON = ["--dataset", "human_eval", "--num_samples", "2", "--max_steps", "16", "--dtype", "float32", "--no_progress", "True"]


@pytest.mark.parametrize("criterion", [*sorted(CRITERIA), *sorted(ALIASES)])
def test_correctness_zero_mismatches_for_every_criterion(tiny_dir, tmp_path, capsys, criterion):
    code = main(["correctness", "--model", str(tiny_dir), *COMMON, "--generation_strategy", "self_speculative",
                 "--criteria", criterion, "--exit_layer", "3", "--num_speculations", "4", "--output_dir", str(tmp_path)])
    assert code == 0 and "0 mismatches" in capsys.readouterr().out


def test_correctness_layer_skip_drafts(tiny_dir, tmp_path, capsys):
    for extra in (["--skip_layers", '{"attn": [1], "mlp": [2]}'], ["--layer_skip_proportion", "0.3", "--exit_layer", "4"],
                  ["--dynamic_early_exit_mode", "consistent_tokens", "--layer_skip_proportion", "0.25", "--exit_layer", "3"]):
        code = main(["correctness", "--model", str(tiny_dir), *COMMON, "--num_speculations", "3", *extra,
                     "--output_dir", str(tmp_path)])
        assert code == 0 and "0 mismatches" in capsys.readouterr().out


def test_generate_autoregressive_dynamic_exit_reports_exit_layers(tiny_dir, capsys):
    for criterion in CRITERIA:
        assert main(["generate", "--model", str(tiny_dir), "--prompt", "def f(x):", "--max_steps", "10", "--sample", "False",
                     "--criteria", criterion, "--json", "--dtype", "float32"]) == 0
        stats = json.loads(capsys.readouterr().out)["stats"]
        histogram = {int(layer): n for layer, n in stats["exit_layer_histogram"].items()}
        assert sum(histogram.values()) == 9 and set(histogram) <= {1, 2, 3, 4}  # one exit per decoded token
        assert stats["mean_exit_layer"] == pytest.approx(sum(layer * n for layer, n in histogram.items()) / 9)


def test_benchmark_reports_what_autoregressive_dynamic_exit_gives_up(tiny_dir, tmp_path, capsys):
    code = main(["benchmark", "--model", str(tiny_dir), *COMMON, "--output_dir", str(tmp_path),
                 "--compare", "autoregressive", "autoregressive:e=4,criteria=top2_margin,threshold=0.0"])
    assert code == 0
    table = capsys.readouterr().out
    label = "autoregressive:exit_layer=4,criteria=top2_margin,threshold=0.0"
    doc = json.loads(next(tmp_path.glob("benchmark_*.json")).read_text())
    dynamic = doc["results"][label]
    mean_exit = dynamic["speed"]["mean_exit_layer"]["mean"]
    assert mean_exit < 4  # every margin of a random tiny model exits early
    assert f"{mean_exit:.1f}" in next(line for line in table.splitlines() if line.startswith(label)).split()
    records = [json.loads(line) for line in next(tmp_path.glob("benchmark_*_samples.jsonl")).read_text().splitlines()]
    ids = {(r["sample_id"], r["strategy"]): r["token_ids"] for r in records}
    same = [ids[(s, label)] == ids[(s, "autoregressive")] for s in {r["sample_id"] for r in records}]
    assert dynamic["matches_autoregressive"] == sum(same) / len(same)
    assert doc["results"]["autoregressive"]["speed"]["mean_exit_layer"]["mean"] is None


def test_tune_writes_a_config_that_other_commands_accept(tiny_dir, tmp_path, capsys):
    out = tmp_path / "draft.json"
    code = main(["tune", "--model", str(tiny_dir), "--dataset", "human_eval", "--num_samples", "2", "--max_steps", "12",
                 "--trials", "4", "--exit_layer", "2", "--num_speculations", "3", "--output", str(out),
                 "--dtype", "float32", "--no_progress", "True"])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["measured"]["trials"] == 4 and doc["measured"]["autoregressive_tokens_per_second"] > 0
    assert doc["measured"]["default"] == {"exit_layer": 2, "num_speculations": 3} and doc["measured"]["default_tokens_per_second"] > 0
    assert f"best ({DraftConfig.from_dict(doc['draft']).label()}): " in capsys.readouterr().out
    assert main(["correctness", "--model", str(tiny_dir), *COMMON, "--draft_config", str(out), "--output_dir", str(tmp_path)]) == 0
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "x", "--max_steps", "5", "--generation_strategy",
                 "self_speculative", "--draft_config", str(out), "--json", "--sample", "False"]) == 0


@pytest.mark.parametrize("extra, needle", [
    (["--skip_layers", "{bad"], "--skip_layers: expected JSON"),
    (["--skip_layers", '{"attn": [7]}'], "outside 0..3"),
    (["--criteria", "nope"], "unknown criterion"),
    (["--criteria", "token_repeat", "--criteria_threshold", "0.5"], "takes no option"),
    (["--layer_skip_proportion", "1.5"], "--layer_skip_proportion must be in [0, 1)"),
    (["--draft_config", "/nonexistent.json"], "no such file"),
])
def test_draft_flags_bad_input_is_one_line(tiny_dir, extra, needle):
    assert_one_line_error(run_cli("generate", "--model", str(tiny_dir), "--prompt", "hi", "--generation_strategy",
                                  "self_speculative", "--exit_layer", "2", "--num_speculations", "2", *extra), needle)
