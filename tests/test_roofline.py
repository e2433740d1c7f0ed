"""benchmarks/roofline.py on a tiny checkpoint: JSON structure and figures derived from timings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import roofline  # noqa: E402


def test_roofline_json_is_computed_from_timings(tiny_dir, tmp_path, monkeypatch, capsys) -> None:
    timings = iter(range(1000))
    monkeypatch.setattr(roofline.time, "perf_counter", lambda: float(next(timings)) ** 2)
    out = tmp_path / "r.json"
    record = roofline.main(["--model", str(tiny_dir), "--repeats", "1", "--inner", "1", "--bandwidth_mib", "1",
                            "--kernels", "packed", "dense", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    r = record["results"]["packed"]
    assert sorted(r["verify_relative"], key=int) == [str(t) for t in range(2, 10)]
    assert sorted(r["draft_relative"], key=int) == ["1", "2", "3"]  # 4-layer model
    # perf_counter returns n**2, so every timing is a distinct odd number: ratios are not constant
    assert len(set(r["verify_relative"].values())) == 8
    assert r["tokens_per_s"] == pytest.approx(1 / r["step_s"])
    assert r["bound_tokens_per_s"] == pytest.approx(record["bandwidth_bytes_per_s"] / r["weight_bytes"])
    assert r["fraction_of_bound"] == pytest.approx(r["tokens_per_s"] / r["bound_tokens_per_s"])
    assert set(record["results"]) == {"packed", "dense"}
    printed = capsys.readouterr().out
    assert "kernel              dense" in printed and "packed vs dense: 1-token step" in printed


def test_weight_bytes_counts_int8_projections_as_one_byte(tiny_dir) -> None:
    from layerskip.checkpoints.loading import load

    full = roofline.weight_bytes(load(str(tiny_dir), "cpu", "float32").model)
    int8 = roofline.weight_bytes(load(str(tiny_dir), "cpu", "float32", "int8").model)
    assert int8 < full / 2


def test_weight_bytes_counts_prepacked_weights(tiny_dir) -> None:
    import torch

    from layerskip.checkpoints.loading import load, load_model

    reference = roofline.weight_bytes(load_model(tiny_dir, torch.device("cpu"), torch.float32))
    assert roofline.weight_bytes(load(str(tiny_dir), "cpu", "float32").model) == reference
