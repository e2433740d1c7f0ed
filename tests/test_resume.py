"""Resume continues only the run it names, with the same settings, and never writes over other files."""

from __future__ import annotations

import json

import pytest

from layerskip.cli import main

COMMON = ["--dataset", "human_eval", "--num_samples", "2", "--max_steps", "6", "--sample", "False",
          "--dtype", "float32", "--no_progress", "True", "--random_shuffle", "False"]


@pytest.fixture(scope="module")
def finished_run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("logs")
    assert main(["benchmark", "--model", str(tiny_dir), *COMMON, "--output_dir", str(out)]) == 0
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("change, key", [
    (["--max_steps", "7"], "generation.max_steps"),
    (["--sample", "True"], "generation.sampling.sample"),
    (["--num_samples", "1"], "num_samples"),
    (["--batch_size", "2"], "batch_size"),
    (["--compare", "autoregressive", "self_speculative", "--exit_layer", "2", "--num_speculations", "2"], "strategies"),
])
def test_resume_with_other_settings_refuses_and_leaves_the_run_alone(finished_run, tiny_dir, capsys, change, key):
    samples = next(finished_run.glob("*_samples.jsonl"))
    before = samples.read_bytes()
    args = ["benchmark", "--model", str(tiny_dir), *COMMON, "--output_dir", str(finished_run), *change,
            "--resume", str(samples)]
    capsys.readouterr()
    assert main(args) == 1
    line = one_error_line(capsys)
    assert "other settings" in line and key in line
    assert samples.read_bytes() == before


@pytest.mark.parametrize("content", ['{"mine": 1}\n', "plain text\n", "[1, 2]\n"])
def test_resume_never_writes_over_a_file_it_did_not_create(tiny_dir, tmp_path, capsys, content):
    mine = tmp_path / "unrelated.json"
    mine.write_text(content)
    args = ["benchmark", "--model", str(tiny_dir), *COMMON, "--output_dir", str(tmp_path), "--resume", str(mine)]
    assert main(args) == 1
    assert "not a run written by layerskip benchmark" in one_error_line(capsys)
    assert mine.read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.json"]


def test_a_resumed_run_keeps_its_records_and_fingerprint(finished_run, tiny_dir, capsys):
    doc_path = next(p for p in finished_run.glob("benchmark_*.json"))
    fingerprint = json.loads(doc_path.read_text())["fingerprint"]
    assert main(["benchmark", "--model", str(tiny_dir), *COMMON, "--output_dir", str(finished_run), "--resume"]) == 0
    doc = json.loads(doc_path.read_text())
    assert doc["fingerprint"] == fingerprint and doc["status"] == "complete"
    assert doc["results"]["autoregressive"]["samples"] == 2


def test_self_generate_continues_only_its_own_file(tiny_dir, tmp_path, capsys):
    from helpers import write_corpus

    (tmp_path / "corpus").mkdir()
    corpus = write_corpus(tmp_path / "corpus", 2)

    def self_generate(output, new_tokens: int) -> int:
        return main(["self-generate", "--model", str(tiny_dir), "--corpus", str(corpus), "--output", str(output),
                     "--prefix_tokens", "4", "--batch_size", "2", "--dtype", "float32", "--no_progress",
                     "--num_sequences", "3", "--new_tokens", str(new_tokens)])

    out = tmp_path / "gen.jsonl"
    assert self_generate(out, 2) == 0
    first = out.read_bytes()
    assert self_generate(out, 2) == 0  # the same run again: nothing to add
    assert out.read_bytes() == first
    capsys.readouterr()
    assert self_generate(out, 3) == 1
    assert "other settings (new_tokens: 2 -> 3)" in one_error_line(capsys)
    assert out.read_bytes() == first

    text = tmp_path / "notes.txt"
    text.write_text("my notes\n")
    assert self_generate(text, 2) == 1
    assert "was not written by layerskip self-generate" in one_error_line(capsys)
    assert text.read_text() == "my notes\n"
