"""``benchmarks/speed.py``: the side-by-side script runs every requested setting against autoregressive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def test_ceiling_model_accepts_every_draft_for_each_length_policy():
    cmd = [sys.executable, str(SCRIPT), "--ceiling", "--exit_layer", "2", "--num_speculations", "3",
           "--draft_length", "fixed", "heuristic", "--max_steps", "12", "--dtype", "float32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| self_speculative")]
    assert [(r[1].strip(), r[2].strip(), r[3].strip()) for r in rows] == [("2", "3", "fixed"), ("2", "3", "heuristic")]
    assert all(float(r[5]) == 1.0 for r in rows)  # acceptance: the upper layers are zeroed
    assert "warning" not in proc.stderr  # greedy outputs equal autoregressive in float32


def test_out_of_range_setting_is_one_error_line():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--exit_layer", "12", "--num_samples", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "speed.py: error: --exit_layer 12 outside 1..11 for this 12-layer model"
    assert "Traceback" not in proc.stderr
