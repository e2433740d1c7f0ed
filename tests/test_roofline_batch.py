"""benchmarks/roofline.py --batch_sizes on the tiny model: record structure and bytes that grow with B."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import roofline  # noqa: E402


def test_batch_roofline_structure_and_bytes(tiny_model) -> None:
    bandwidth, context = 1e10, 8
    rows = roofline.batch_roofline(tiny_model, bandwidth, [1, 2], repeats=1, inner=1, context=context)
    assert list(rows) == ["1", "2"]
    one, two = rows["1"], rows["2"]
    c = tiny_model.config
    per_row = context * c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * tiny_model.attention_dtype.itemsize
    weights = roofline.weight_bytes(tiny_model)
    for b, r in ((1, one), (2, two)):
        assert r["batch_size"] == b
        assert r["weight_bytes"] == weights  # the weights are read once a step, whatever B
        assert r["kv_bytes"] == b * per_row
        assert r["bytes_per_step"] == weights + b * per_row
        assert r["bound_steps_per_s"] == pytest.approx(bandwidth / r["bytes_per_step"])
        assert r["bound_tokens_per_s"] == pytest.approx(b * r["bound_steps_per_s"])
        assert r["step_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(b / r["step_s"])
        assert r["fraction_of_bound"] == pytest.approx(r["tokens_per_s"] / r["bound_tokens_per_s"])
        assert list(r["verify_relative"]) == [str(t) for t in range(2, 10)]
        assert all(v > 0 for v in r["verify_relative"].values())
    assert two["bytes_per_step"] - one["bytes_per_step"] == per_row
    assert two["bytes_per_step"] < 2 * one["bytes_per_step"]  # weights shared: less than two single-row steps
    assert two["bound_tokens_per_s"] > one["bound_tokens_per_s"]
    table = roofline.batch_table(rows, "packed", context)
    assert len(table.splitlines()) == 4 and "T=9" in table


def test_main_batch_key_only_when_asked(tiny_dir, tmp_path, capsys) -> None:
    common = ["--model", str(tiny_dir), "--repeats", "1", "--inner", "1", "--bandwidth_mib", "1",
              "--kernels", "packed", "--exits", "2", "--context", "8"]
    plain = roofline.main([*common, "--out", str(tmp_path / "a.json")])
    assert "batch" not in plain
    out = tmp_path / "b.json"
    record = roofline.main([*common, "--batch_sizes", "1", "2", "--out", str(out)])
    assert json.loads(out.read_text())["batch"]["packed"].keys() == {"1", "2"}
    assert record["context"] == 8
    assert "batch of B rows" in capsys.readouterr().out
