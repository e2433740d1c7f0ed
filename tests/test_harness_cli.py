"""``layerskip benchmark`` / ``sweep`` / ``correctness`` end to end on a tiny model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from helpers import assert_one_line_error, run_cli

from layerskip.cli import main

COMMON = ["--dataset", "human_eval", "--num_samples", "2", "--max_steps", "12", "--sample", "False",
          "--dtype", "float32", "--no_progress", "True"]


def test_benchmark_compare_writes_valid_json_and_samples(tiny_dir, tmp_path, capsys):
    out = tmp_path / "logs"
    code = main(["benchmark", "--model", str(tiny_dir), *COMMON, "--compare", "--exit_layer", "2",
                 "--num_speculations", "3", "--output_dir", str(out), "--allow_code_execution", "True"])
    assert code == 0
    table = capsys.readouterr().out
    doc = json.loads(next(out.glob("benchmark_*.json")).read_text())
    assert doc["strategies"] == ["autoregressive", "self_speculative:exit_layer=2,num_speculations=3"]
    assert doc["generation"]["max_steps"] == 12 and doc["arguments"]["num_samples"] == 2 and doc["num_samples"] == 2
    assert doc["environment"]["packages"]["torch"] and doc["environment"]["dtype"] == "float32"
    assert "git_commit" in doc["environment"] and "git_dirty" in doc["environment"]
    spec = doc["results"]["self_speculative:exit_layer=2,num_speculations=3"]
    assert spec["samples"] == 2 and spec["speedup"] > 0
    row = next(line for line in table.splitlines() if line.startswith("self_speculative:exit_layer=2,num_speculations=3"))
    assert f"{spec['speedup']:.2f}x" in row.split() and f"{spec['speed']['acceptance_rate']['mean']:.3f}" in row.split()
    assert spec["matches_autoregressive"] == 1.0 and doc["results"]["autoregressive"]["matches_autoregressive"] == 1.0
    assert set(spec["speed"]["tokens_per_second"]) == {"mean", "std", "n"}
    assert "pass@1" in spec["quality"] and "rougeL" in spec["quality"]
    records = [json.loads(line) for line in next(out.glob("benchmark_*_samples.jsonl")).read_text().splitlines()]
    assert len(records) == 4
    by = {(r["sample_id"], r["strategy"]): r for r in records}
    for sid in {r["sample_id"] for r in records}:  # greedy: identical outputs
        assert by[(sid, "autoregressive")]["token_ids"] == by[(sid, "self_speculative:exit_layer=2,num_speculations=3")]["token_ids"]


def test_benchmark_resume_skips_finished_samples(tiny_dir, tmp_path):
    out = tmp_path / "logs"
    args = ["benchmark", "--model", str(tiny_dir), *COMMON, "--output_dir", str(out), "--random_shuffle", "False"]
    assert main(args) == 0
    samples = next(out.glob("*_samples.jsonl"))
    lines = samples.read_text().splitlines()
    samples.write_text(lines[0] + "\n" + lines[1][:20])  # a crash mid-write of the second record
    assert main([*args, "--resume"]) == 0
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["sample_id"] for r in records] == ["HumanEval/0", "HumanEval/1"]


def test_benchmark_transformers_engine_side_by_side(tiny_dir, tmp_path, capsys):
    code = main(["benchmark", "--model", str(tiny_dir), *COMMON, "--compare", "autoregressive", "self_speculative",
                 "--exit_layer", "2", "--num_speculations", "3", "--engine", "both", "--output_dir", str(tmp_path)])
    assert code == 0
    doc = json.loads(next(tmp_path.glob("benchmark_*.json")).read_text())
    hf = doc["results"]["hf:self_speculative:exit_layer=2,num_speculations=3"]
    assert hf["engine"] == "transformers" and hf["samples"] == 2 and "speedup" in hf
    assert hf["matches_autoregressive"] == 1.0  # against hf:autoregressive
    records = [json.loads(line) for line in next(tmp_path.glob("*_samples.jsonl")).read_text().splitlines()]
    by = {(r["sample_id"], r["strategy"]): r["token_ids"] for r in records}
    for sid in {r["sample_id"] for r in records}:
        assert by[(sid, "hf:autoregressive")] == by[(sid, "autoregressive")]


def test_correctness_passes_and_reports(tiny_dir, tmp_path, capsys):
    code = main(["correctness", "--model", str(tiny_dir), *COMMON, "--exit_layer", "1", "--num_speculations", "4",
                 "--output_dir", str(tmp_path)])
    assert code == 0
    assert "0 mismatches" in capsys.readouterr().out
    doc = json.loads(next(tmp_path.glob("correctness_*.json")).read_text())
    assert doc["mismatches"] == [] and doc["samples"] == 2


def test_correctness_reports_a_mismatch_with_its_position(tiny_dir, tmp_path, capsys):
    """Early-exit inference is not the full model: correctness must catch it and exit non-zero."""
    code = main(["correctness", "--model", str(tiny_dir), *COMMON, "--generation_strategy", "autoregressive",
                 "--exit_layer", "1", "--output_dir", str(tmp_path)])
    assert code == 1
    out = capsys.readouterr().out
    assert "MISMATCH sample HumanEval/" in out and "at token" in out


def test_sweep_writes_csv_png_and_best(tiny_dir, tmp_path, capsys):
    code = main(["sweep", "--model", str(tiny_dir), *COMMON, "--exit_layer_first", "1", "--exit_layer_last", "3",
                 "--exit_layer_step", "2", "--num_speculations_first", "2", "--num_speculations_last", "3",
                 "--output_dir", str(tmp_path)])
    assert code == 0
    rows = list(csv.DictReader(next(tmp_path.glob("sweep_*.csv")).open()))
    assert [(r["exit_layer"], r["num_speculations"]) for r in rows] == [("1", "2"), ("1", "3"), ("3", "2"), ("3", "3")]
    png = next(tmp_path.glob("sweep_*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = json.loads(next(tmp_path.glob("sweep_*_best.json")).read_text())
    assert best["tokens_per_second"] == max(float(r["tokens_per_second"]) for r in rows)
    assert "best: exit_layer=" in capsys.readouterr().out


@pytest.mark.parametrize("extra, needle", [
    (["--compare", "self_speculative:exit_layer=9,num_speculations=2"], "--exit_layer 9 outside 1..3"),
    (["--compare", "greedy"], "unknown strategy"),
    (["--dataset", "custom_jsonl"], "needs --data_path"),
    (["--num_samples", "0"], "--num_samples must be >= 1"),
])
def test_harness_bad_input_is_one_line(tiny_dir, tmp_path, extra, needle):
    assert_one_line_error(run_cli("benchmark", "--model", str(tiny_dir), *COMMON, "--output_dir", str(tmp_path), *extra), needle)


def test_benchmark_under_torchrun_shards_and_merges(tiny_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "layerskip",
           "benchmark", "--model", str(tiny_dir), "--dataset", "human_eval", "--num_samples", "3", "--max_steps", "6",
           "--sample", "False", "--dtype", "float32", "--no_progress", "True", "--output_dir", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(next(out.glob("benchmark_*.json")).read_text())
    assert doc["world_size"] == 2 and doc["results"]["autoregressive"]["samples"] == 3
    records = [json.loads(line) for line in next(out.glob("*_samples.jsonl")).read_text().splitlines()]
    assert sorted(r["rank"] for r in records) == [0, 0, 1]
    assert not list(out.glob("*.rank*.jsonl"))
