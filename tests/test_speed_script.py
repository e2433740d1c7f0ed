"""``benchmarks/speed.py``: the side-by-side script runs every requested setting against autoregressive."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

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


EXIT_QUALITY = SCRIPT.parent / "exit_quality.py"


def test_exit_quality_reports_every_exit_on_the_held_out_split(tiny_dir, tmp_path):
    from helpers import dampen_layers, write_corpus
    from safetensors.torch import save_file

    from layerskip.checkpoints.loading import load_model

    write_corpus(tmp_path, 8)
    # layers 2.. contribute nothing: exits 2, 3 and 4 agree with the last layer everywhere
    model_dir = Path(shutil.copytree(tiny_dir, tmp_path / "model"))
    model = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    dampen_layers(model, 2, 0.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(model_dir / "model.safetensors"),
              metadata={"format": "pt"})
    cmd = [sys.executable, str(EXIT_QUALITY), "--model", str(model_dir), "--corpus", str(tmp_path / "*.py"),
           "--batch_size", "2", "--seq_len", "16", "--batches", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in proc.stdout.splitlines() if line.startswith("| ")}
    agreement = [float(x) for x in rows["agreement"]]
    loss = [float(x) for x in rows["loss"]]
    assert len(loss) == 4 and agreement[1:] == [1.0, 1.0, 1.0] and loss[1] == loss[3]

    missing = subprocess.run([*cmd[:4], "--corpus", str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("exit_quality.py: error: corpus")
