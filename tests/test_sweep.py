"""``layerskip sweep``: point-by-point CSV, resume, refused upstream flags, the heat map."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import pytest

from layerskip.cli import main
from layerskip.evaluation import sweep as sweep_files
from layerskip.evaluation.heat_map import heat_map

COMMON = ["--dataset", "human_eval", "--num_samples", "2", "--max_steps", "8", "--sample", "False",
          "--dtype", "float32", "--no_progress", "True", "--exit_layer_first", "1", "--exit_layer_last", "2",
          "--num_speculations_first", "2", "--num_speculations_last", "2"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_csv_is_written_after_every_point_and_a_resume_runs_nothing_again(tiny_dir, tmp_path, monkeypatch, capsys):
    written: list[int] = []
    original = sweep_files.write_csv
    monkeypatch.setattr("layerskip.cli.sweep.write_csv", lambda path, rows: (written.append(len(rows)), original(path, rows)))
    args = ["sweep", "--model", str(tiny_dir), *COMMON, "--output_dir", str(tmp_path)]
    assert main(args) == 0
    assert written == [0, 1, 2]  # baseline, then one more row per grid point
    samples = next(tmp_path.glob("sweep_*_samples.jsonl"))
    records = samples.read_text().splitlines()
    assert len(records) == 3 * 2
    rows = list(csv.DictReader(next(tmp_path.glob("sweep_*.csv")).open()))
    assert [(r["exit_layer"], r["num_speculations"]) for r in rows] == [("1", "2"), ("2", "2")]
    capsys.readouterr()

    # drop the last point's records (as if the sweep died there): resume runs only that point
    samples.write_text("\n".join(records[:4]) + "\n")
    assert main([*args, "--resume", str(samples)]) == 0
    assert len(samples.read_text().splitlines()) == 6
    assert len(list(tmp_path.glob("sweep_*_samples.jsonl"))) == 1


def test_resume_with_other_settings_is_refused(tiny_dir, tmp_path, capsys):
    assert main(["sweep", "--model", str(tiny_dir), *COMMON, "--output_dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["sweep", "--model", str(tiny_dir), *COMMON, "--output_dir", str(tmp_path), "--max_steps", "9",
                 "--resume", str(tmp_path)]) == 1
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--generation_strategy", "autoregressive"], ["--exit_layer", "2"], ["--num_speculations", "3"]])
def test_flags_the_grid_sets_are_refused_before_loading(tmp_path, capsys, flag):
    code = main(["sweep", "--model", str(tmp_path / "missing"), *flag, "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and f"{flag[0]} cannot be honoured" in err


def test_heat_map_of_a_one_point_grid_is_legible_and_titled(tmp_path):
    rows = [{"exit_layer": 2, "num_speculations": 4, "tokens_per_second": 30.0}]
    path = tmp_path / "one.png"
    heat_map(rows, path, 20.0, "human_eval, 10 samples, bfloat16, greedy")
    width, height = png_size(path)
    assert width >= 700 and height >= 450  # MIN_WIDTH x MIN_HEIGHT inches at 120 dpi


def test_heat_map_title_names_what_was_measured():
    from argparse import Namespace

    from layerskip.cli.sweep import title

    args = Namespace(dataset="human_eval", sample=True, temperature=0.6, top_p=0.9, top_k=0, max_steps=64)
    text = title(args, 10, "bfloat16")
    assert "human_eval" in text and "10 samples" in text and "bfloat16" in text and "T=0.6" in text
    assert "greedy" in title(Namespace(**{**vars(args), "sample": False}), 10, "float32")


def test_best_point_is_the_fastest_row():
    rows = [{"tokens_per_second": 3.0, "k": 1}, {"tokens_per_second": None, "k": 2}, {"tokens_per_second": 5.0, "k": 3}]
    assert sweep_files.best_point(rows)["k"] == 3
    with pytest.raises(Exception, match="empty exit layer range"):
        sweep_files.grid(3, 2, 1, "exit layer")
