"""lm-evaluation-harness integration: the LM methods on hand-built requests, and local tasks of
each type (generate_until scored by exact match, multiple choice) run offline on the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from layerskip.cli import main
from layerskip.draft_config import DraftConfig
from layerskip.lm_eval_adapter import LayerskipLM
from layerskip.loading import load
from layerskip.strategy import Strategy

TASKS = Path(__file__).parent / "lm_eval_tasks"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lm(tiny_dir):
    loaded = load(str(tiny_dir), "cpu", "float32")
    return LayerskipLM(loaded, Strategy("layerskip", "self_speculative", DraftConfig(exit_layer=2, num_speculations=3)), batch_size=2)


def test_loglikelihood_matches_a_direct_forward(lm):
    requests = [Instance("loglikelihood", {}, ("def add(a, b):", " return a"), 0),
                Instance("loglikelihood", {}, ("x", " = 1"), 1),
                Instance("loglikelihood", {}, ("for i in range(10):\n   ", " print(i)"), 2)]
    results = lm.loglikelihood(requests, disable_tqdm=True)
    for request, (score, greedy) in zip(requests, results):
        context, continuation = request.args
        ctx, cont = lm._encode_pair(context, continuation)
        with torch.no_grad():
            logprobs = lm.model(torch.tensor([ctx + cont]))[0].float().log_softmax(-1)
        expected = sum(float(logprobs[len(ctx) - 1 + i, tok]) for i, tok in enumerate(cont))
        assert score == pytest.approx(expected, abs=1e-4)
        assert greedy == all(int(logprobs[len(ctx) - 1 + i].argmax()) == tok for i, tok in enumerate(cont))


def test_loglikelihood_rolling_sums_every_token(lm):
    text = "def fib(n):\n    return n"
    (score,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    ids = lm.tok_encode(text, add_special_tokens=False)
    with torch.no_grad():
        logprobs = lm.model(torch.tensor([[lm.prefix_token_id, *ids]]))[0].float().log_softmax(-1)
    assert score == pytest.approx(sum(float(logprobs[i, t]) for i, t in enumerate(ids)), abs=1e-4)


def test_generate_until_stops_and_records_speed(lm):
    requests = [Instance("generate_until", {}, ("def add(a, b):", {"until": ["\n\n"], "max_gen_toks": 12}), 0),
                Instance("generate_until", {}, ("import", {"until": ["os"], "max_gen_toks": 8, "do_sample": False}), 1)]
    outputs = lm.generate_until(requests, disable_tqdm=True)
    assert len(outputs) == 2 and "\n\n" not in outputs[0] and "os" not in outputs[1]
    speed = lm.speed_summary()
    assert speed["generation_requests"] == 2 and speed["tokens_per_second"] > 0
    assert speed["acceptance_rate"] is not None


def test_eval_local_tasks_offline_on_the_shipped_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["eval", "--tasks", "layerskip_code_completion", "layerskip_code_choice", "--include_path", str(TASKS),
                 "--generation_strategy", "self_speculative", "--output_dir", str(tmp_path), "--limit", "4"])
    assert code == 0
    doc = json.loads(next(tmp_path.glob("eval_*.json")).read_text())
    assert "exact_match,none" in doc["results"]["layerskip_code_completion"]
    assert "acc,none" in doc["results"]["layerskip_code_choice"]
    assert doc["speed"]["generation_requests"] == 4
    assert doc["speed"]["tokens_per_second"] > 0 and doc["speed"]["acceptance_rate"] is not None


def test_eval_unknown_task_is_a_clear_error(tmp_path):
    assert main(["eval", "--tasks", "no_such_task_xyz", "--include_path", str(TASKS), "--output_dir", str(tmp_path)]) == 1
