"""Datasets (formats, n-shot, templates, local data, clear errors) and metrics."""

from __future__ import annotations

import json

import pytest

from layerskip.errors import LayerskipError
from layerskip.evaluation.datasets import load_samples
from layerskip.evaluation.execution import run_tests, truncate_completion
from layerskip.evaluation.metrics import bleu, edit_distance, exact_match, rouge, summarize, text_metrics


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_human_eval_offline_in_order_without_shuffle():
    samples = load_samples("human_eval", num_samples=3, random_shuffle=False)
    assert [s.id for s in samples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert samples[0].prompt.startswith("from typing import List") and samples[0].reference.strip()
    shuffled = load_samples("human_eval", num_samples=3, seed=1)
    assert shuffled == load_samples("human_eval", num_samples=3, seed=1)
    assert [s.id for s in shuffled] != [s.id for s in samples]


def test_cnn_dm_from_local_files_with_upstream_format_and_n_shot(tmp_path):
    test = [{"id": f"t{i}", "article": f"Article number {i} " + "word " * 120, "highlights": f"Summary {i}."} for i in range(3)]
    train = [{"id": f"tr{i}", "article": f"Train article {i}", "highlights": f"Train summary {i}."} for i in range(4)]
    write_jsonl(tmp_path / "test.jsonl", test)
    write_jsonl(tmp_path / "train.jsonl", train)
    zero = load_samples("cnn_dm_summarization", str(tmp_path), random_shuffle=False)
    assert zero[0].prompt == f"Article: {test[0]['article']}\nSummary:" and zero[0].reference == " Summary 0."
    two = load_samples("cnn_dm_summarization", str(tmp_path), n_shot=2, random_shuffle=False, template="<s>{message}</s>")
    body = two[0].prompt.removeprefix("<s>").removesuffix("</s>")
    assert body.endswith("\n" + zero[0].prompt)
    assert body.count("Article: Train article") == 2 and body.count("\nSummary: Train summary") == 2
    lm = load_samples("cnn_dm_lm", str(tmp_path), random_shuffle=False)
    assert len(lm[0].prompt.split(" ")) == 100 and lm[0].reference.strip().startswith("word")


def test_custom_jsonl_fields_and_malformed_lines(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"q": "2+2=", "a": "4"}, {"q": "3+3=", "a": "6"}])
    samples = load_samples("custom_jsonl", str(path), prompt_field="q", response_field="a", random_shuffle=False)
    assert [(s.prompt, s.reference) for s in samples] == [("2+2=", "4"), ("3+3=", "6")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "1", "a": "2"}\n{"q": oops}\n')
    with pytest.raises(LayerskipError, match=r"bad.jsonl:2: invalid JSON"):
        load_samples("custom_jsonl", str(bad), prompt_field="q", response_field="a")
    with pytest.raises(LayerskipError, match=r"data.jsonl:1: missing field\(s\) prompt"):
        load_samples("custom_jsonl", str(path))
    with pytest.raises(LayerskipError, match="needs `data_path`"):
        load_samples("custom_jsonl")
    with pytest.raises(LayerskipError, match="must contain"):
        load_samples("human_eval", template="no placeholder")


def test_hub_dataset_offline_says_how_to_supply_data(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(LayerskipError, match="`data_path` DIR"):
        load_samples("xsum_summarization")


def test_metrics():
    assert rouge("the cat sat", "the cat sat")["rougeL"] == pytest.approx(1.0)
    assert rouge("a b c d", "x y z")["rouge1"] == 0.0
    assert bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert 0 < bleu("the cat sat on a mat", "the cat sat on the mat") < 100
    assert exact_match(" 42\n", "42") == 1.0 and exact_match("41", "42") == 0.0
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3
    assert set(text_metrics("a", "a")) == {"rouge1", "rouge2", "rouge3", "rougeL", "bleu", "exact_match", "edit_distance"}
    s = summarize([1.0, 3.0, None])
    assert s == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "n": 2}


def test_code_execution_passes_fails_and_times_out():
    problem = load_samples("human_eval", random_shuffle=False, num_samples=1)[0].extra["problem"]
    assert run_tests(problem, problem["canonical_solution"])["passed"]
    failed = run_tests(problem, "    return False\n")
    assert not failed["passed"] and failed["result"].startswith("failed")
    assert run_tests(problem, "    while True:\n        pass\n", timeout=1.0)["result"] == "timed out"
    assert truncate_completion("    return 1\n\ndef other():\n    pass") == "    return 1\n"
