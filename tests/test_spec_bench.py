"""Spec-Bench (layerskip.evaluation.datasets, runner, categories): the shipped questions and their
categories, the multi-turn flow (the second turn after the strategy's own first answer), merged turn
statistics, and the benchmark's per-category table, JSON and chart."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from helpers import assert_one_line_error, run_cli

from layerskip.checkpoints.loading import load
from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.strategy import Strategy
from layerskip.errors import LayerskipError
from layerskip.evaluation.categories import category_results
from layerskip.evaluation.datasets import SPEC_BENCH, SPEC_BENCH_CATEGORIES, load_samples
from layerskip.evaluation.engines import LayerskipEngine, Output
from layerskip.evaluation.runner import merge_turns, run_sample


def test_the_shipped_questions_have_their_license_and_categories() -> None:
    assert "Apache License" in (SPEC_BENCH.parent / "LICENSE").read_text()
    assert "Spec-Bench" in (SPEC_BENCH.parent / "README.md").read_text()
    samples = load_samples("spec_bench", random_shuffle=False)
    counts = Counter(s.category for s in samples)
    assert len(samples) == 480 and set(counts) == set(SPEC_BENCH_CATEGORIES)
    assert all(counts[c] == 10 for c in SPEC_BENCH_CATEGORIES[:8]) and all(counts[c] == 80 for c in SPEC_BENCH_CATEGORIES[8:])
    assert all(len(s.turns) == 2 for s in samples if s.category == "writing")
    assert all(len(s.turns) == 1 for s in samples if s.category == "rag")
    picked = load_samples("spec_bench", categories=["math", "qa"], num_samples=30, seed=1)
    assert len(picked) == 30 and {s.category for s in picked} == {"math", "qa"}
    wrapped = load_samples("spec_bench", categories=["math"], template="Q: {message}", num_samples=1)[0]
    assert all(t.startswith("Q: ") for t in wrapped.turns) and len(wrapped.turns) == 2


@pytest.mark.parametrize("kwargs, needle", [
    ({"dataset": "spec_bench", "categories": ["poetry"]}, "unknown spec_bench category poetry (choose from coding, "),
    ({"dataset": "human_eval", "categories": ["math"]}, "human_eval has no categories"),
    ({"dataset": "spec_bench", "n_shot": 2}, "spec_bench has no examples to draw `n_shot` from"),
])
def test_bad_category_choices_are_one_error(kwargs, needle) -> None:
    with pytest.raises(LayerskipError, match=needle.replace("(", r"\(")):
        load_samples(**kwargs)


def test_the_cli_names_the_flag_for_a_bad_category(tiny_dir, tmp_path) -> None:
    assert_one_line_error(run_cli("benchmark", "--model", str(tiny_dir), "--dataset", "spec_bench", "--categories", "poetry",
                                  "--output_dir", str(tmp_path)), "unknown spec_bench category poetry")


class Recorder:
    """An engine that answers each prompt with fixed tokens and remembers the prompts."""

    def __init__(self) -> None:
        self.prompts: list[list[int]] = []

    def run(self, spec, prompt_ids, config) -> Output:
        self.prompts.append(list(prompt_ids))
        n = len(self.prompts)
        return Output([n, n], f"answer{n}", {"generated_tokens": 2, "total_time": 0.5 * n, "drafted_tokens": 4,
                                             "accepted_tokens": n, "verify_forwards": 1, "time_to_first_token": 0.1 * n,
                                             "draft_forwards": 4, "mean_exit_layer": None})


def test_the_second_turn_follows_the_strategys_own_first_answer() -> None:
    sample = next(s for s in load_samples("spec_bench", random_shuffle=False) if len(s.turns) == 2)
    seen: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def encode(turns, answers):
        seen.append((tuple(turns), tuple(answers)))
        return list(range(len(turns) + 10 * len(answers)))

    engine = Recorder()
    out, first_len = run_sample(engine, Strategy(), sample, encode, GenerationConfig(max_steps=4))
    assert seen == [((sample.turns[0],), ()), (sample.turns, ("answer1",))]
    assert first_len == 1 and out.token_ids == [1, 1, 2, 2] and out.text == "answer1\n\nanswer2"
    stats = out.stats
    assert stats["generated_tokens"] == 4 and stats["total_time"] == pytest.approx(1.5)
    assert stats["tokens_per_second"] == pytest.approx(4 / 1.5) and stats["time_to_first_token"] == pytest.approx(0.1)
    assert stats["acceptance_rate"] == pytest.approx(3 / 8) and stats["mean_tokens_per_verification"] == pytest.approx(1.0)


def test_merge_of_one_turn_is_that_turn() -> None:
    one = Output([1], "a", {"generated_tokens": 1})
    assert merge_turns([one]) is one


def test_multi_turn_on_the_shipped_model_is_exact_and_speculation_is_lossless() -> None:
    """The shipped model has no chat template: the plain transcript (answer after its turn, a blank line
    before the next); greedy self-speculation gives the autoregressive tokens over both turns."""
    from layerskip.cli.harness import Harness

    loaded = load(None, "cpu", "float32")
    sample = next(s for s in load_samples("spec_bench", random_shuffle=False) if s.category == "coding")
    config = GenerationConfig(max_steps=12, sampling=SamplingConfig(sample=False))
    harness = Harness(loaded, [sample], config, None, {}, chat=False)  # type: ignore[arg-type]
    second = harness.encode_turns(sample.turns, ["ANSWER"])
    assert second == loaded.tokenizer(sample.turns[0] + "ANSWER\n\n" + sample.turns[1])["input_ids"]
    engine = LayerskipEngine(loaded)
    ar, _ = run_sample(engine, Strategy(), sample, harness.encode_turns, config)
    spec = Strategy.parse("self_speculative:exit_layer=2,num_speculations=4")
    sd, _ = run_sample(engine, spec, sample, harness.encode_turns, config)
    assert len(ar.token_ids) == ar.stats["generated_tokens"] == 24
    assert sd.token_ids == ar.token_ids and sd.stats["verify_forwards"] < 24


def test_the_benchmark_writes_a_table_json_and_chart_per_category(tiny_dir, tmp_path) -> None:
    result = run_cli("benchmark", "--model", str(tiny_dir), "--dataset", "spec_bench", "--categories", "writing", "rag",
                     "--num_samples", "3", "--max_steps", "4", "--sample", "False", "--dtype", "float32", "--compare",
                     "autoregressive", "self_speculative:exit_layer=2,num_speculations=2", "--no_progress", "True",
                     "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "| category | questions | speed-up |" in result.stdout and "| **overall** | 3 |" in result.stdout
    document = json.loads(next(tmp_path.glob("benchmark_spec_bench_*[0-9].json")).read_text())
    table = document["categories"]["self_speculative:exit_layer=2,num_speculations=2"]
    assert table["overall"]["questions"] == 3 and set(table) - {"overall"} <= {"writing", "rag"}
    assert all(row["speedup"] > 0 for row in table.values())
    chart = next(tmp_path.glob("*_categories.png"))
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_category_speedups_are_all_tokens_over_all_time() -> None:
    def record(sample, strategy, category, tokens, seconds):
        return {"sample_id": sample, "strategy": strategy, "category": category,
                "speed": {"generated_tokens": tokens, "total_time": seconds, "tokens_per_second": tokens / seconds,
                          "acceptance_rate": None, "mean_tokens_per_verification": None}}
    spec = Strategy.parse("self_speculative:exit_layer=1,num_speculations=2")
    records = [record("a", "autoregressive", "qa", 10, 1.0), record("a", spec.label, "qa", 10, 0.5),
               record("b", "autoregressive", "qa", 30, 1.0), record("b", spec.label, "qa", 30, 2.0)]
    table = category_results(records, [Strategy(), spec])[spec.label]
    assert table["qa"]["speedup"] == pytest.approx((40 / 2.5) / (40 / 2.0))
    assert table["qa"]["slower_share"] == 0.5 and table["qa"]["slowest"] == pytest.approx(0.5)
    assert table["overall"]["questions"] == 2


def test_legend_labels_keep_only_the_settings_that_differ() -> None:
    from layerskip.evaluation.categories import legend_labels

    common = "k=4,draft_vocab=8192,draft=prompt_lookup+model"
    labels = [f"self_speculative:{common},draft_adapter=/a/old", f"self_speculative:{common},draft_adapter=new"]
    assert legend_labels(labels) == ["self_speculative:draft_adapter=/a/old", "self_speculative:draft_adapter=new"]
    assert legend_labels(["self_speculative:k=2"]) == ["self_speculative:k=2"]
    assert legend_labels(["hf:self_speculative:exit_layer=4,k=2", "hf:self_speculative:exit_layer=4,k=3",
                          "hf:autoregressive"]) == ["hf:self_speculative:k=2", "hf:self_speculative:k=3", "hf:autoregressive"]
    assert legend_labels(["self_speculative:k=2,draft_adapter=C:/a", "self_speculative:k=2,draft_adapter=C:/b"]) == \
        ["self_speculative:draft_adapter=C:/a", "self_speculative:draft_adapter=C:/b"]
    assert legend_labels(["self_speculative:k=2", "self_speculative:k=2,draft=model"]) == \
        ["self_speculative:k=2", "self_speculative:draft=model"]
