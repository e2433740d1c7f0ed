"""lm-evaluation-harness integration: the LM methods on hand-built requests, and local tasks of
each type (generate_until scored by exact match, multiple choice) run offline on the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from layerskip.cli import main
from layerskip.drafters.config import DraftConfig
from layerskip.evaluation.lm_eval_adapter import LayerskipLM
from layerskip.checkpoints.loading import load
from layerskip.decoding.strategy import Strategy

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
    """lm-eval's own output: results JSON (configs, versions, higher_is_better) with the speed block,
    samples JSONL per task, and its summary table on stdout."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["eval", "--tasks", "layerskip_code_completion", "layerskip_code_choice", "--include_path", str(TASKS),
                 "--generation_strategy", "self_speculative", "--output_path", str(tmp_path), "--limit", "4",
                 "--log_samples", "True", "--batch_size", "auto", "--no_progress", "True"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Tasks" in out and "|Metric" in out.replace(" ", "") and "layerskip_code_completion" in out and "tok/s" in out
    folder = tmp_path / "layerskip-pycode"  # OUTPUT_PATH/<model>/, as lm_eval run writes it
    doc = json.loads(next(folder.glob("results_*.json")).read_text())
    assert "exact_match,none" in doc["results"]["layerskip_code_completion"]
    assert "acc,none" in doc["results"]["layerskip_code_choice"]
    assert set(doc["configs"]) == set(doc["versions"]) == {"layerskip_code_completion", "layerskip_code_choice"}
    assert doc["higher_is_better"]["layerskip_code_completion"]["exact_match"] is True
    speed = doc["layerskip"]["speed"]
    assert speed["generation_requests"] == 4
    assert speed["tokens_per_second"] > 0 and speed["acceptance_rate"] is not None
    assert doc["config"]["batch_sizes"]  # --batch_size auto chose one
    samples = [json.loads(line) for line in next(folder.glob("samples_layerskip_code_completion_*.jsonl")).open()]
    assert len(samples) == 4 and {"doc", "target", "resps", "filtered_resps", "exact_match"} <= set(samples[0])


def test_gen_kwargs_override_the_task(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = main(["eval", "--tasks", "layerskip_code_completion", "--include_path", str(TASKS), "--limit", "2",
                 "--gen_kwargs", "max_gen_toks=3", "--output_path", str(tmp_path), "--no_progress", "True"])
    assert code == 0
    doc = json.loads(next(tmp_path.glob("*/results_*.json")).read_text())
    assert doc["configs"]["layerskip_code_completion"]["generation_kwargs"]["max_gen_toks"] == 3
    assert doc["layerskip"]["speed"]["generated_tokens"] <= 2 * 3


def test_local_task_runs_from_another_directory(tmp_path, monkeypatch, capsys):
    """The task's data_files are relative to its YAML: found from any working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = main(["eval", "--tasks", "layerskip_code_completion", "--include_path", str(TASKS), "--limit", "1",
                 "--output_path", str(tmp_path / "out"), "--no_progress", "True"])
    assert code == 0
    doc = json.loads(next((tmp_path / "out").glob("*/results_*.json")).read_text())
    assert doc["layerskip"]["speed"]["generation_requests"] == 1


def test_local_task_data_resolution_keeps_lm_evals_rule_first(tmp_path, monkeypatch):
    from layerskip.evaluation.local_tasks import task_specs

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "a.jsonl").write_text("{}\n")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "b.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path / "cwd")
    entry = lambda files: type("Entry", (), {"yaml_path": tasks / "t.yaml",
                                            "cfg": {"task": "t", "dataset_kwargs": {"data_files": files}}})()
    manager = type("Manager", (), {"task_index": {"beside": entry({"test": "a.jsonl"}), "cwd": entry({"test": "b.jsonl"}),
                                                  "missing": entry(["c.jsonl"]), "hub": type("E", (), {"cfg": {}, "yaml_path": None})()}})()
    beside, cwd, missing, hub = task_specs(manager, ["beside", "cwd", "missing", "hub"])
    assert beside["dataset_kwargs"]["data_files"] == {"test": str((tasks / "a.jsonl").resolve())}
    assert manager.task_index["beside"].cfg["dataset_kwargs"]["data_files"] == {"test": "a.jsonl"}  # not mutated
    assert (cwd, missing, hub) == ("cwd", "missing", "hub")


def test_local_task_with_missing_data_is_one_error_line(tmp_path, monkeypatch, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    yaml = (TASKS / "code_completion.yaml").read_text().replace("code_completion.jsonl", "gone.jsonl")
    (tasks / "gone.yaml").write_text(yaml.replace("task: layerskip_code_completion", "task: layerskip_gone"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = main(["eval", "--tasks", "layerskip_gone", "--include_path", str(tasks), "--limit", "1",
                 "--output_path", str(tmp_path / "out"), "--no_progress", "True"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "beside the task's YAML" in err[0]


@pytest.mark.parametrize("extra, needle", [
    (["--model_args", "pretrained=x,colour=red"], "--model_args: unknown key 'colour'"),
    (["--batch_size", "many"], "--batch_size must be a positive integer or auto"),
    (["--fewshot_as_multiturn", "True"], "needs --apply_chat_template True"),
])
def test_bad_eval_flags_are_refused_before_loading(tmp_path, capsys, extra, needle):
    code = main(["eval", "--tasks", "layerskip_code_completion", "--include_path", str(TASKS),
                 "--output_path", str(tmp_path), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and needle in err[0]


def test_auto_batch_size_follows_free_memory(lm, monkeypatch):
    monkeypatch.setattr(lm, "batch_size", "auto")
    monkeypatch.setattr("layerskip.evaluation.lm_eval_adapter.free_memory", lambda device: 10**12)
    assert lm.fitting_batch_size(100) == lm.max_batch_size
    row = 100 * (2 * lm.model.config.vocab_size * 4 + 8 * lm.model.config.hidden_size * 4)
    monkeypatch.setattr("layerskip.evaluation.lm_eval_adapter.free_memory", lambda device: 2 * 3 * row)
    assert lm.fitting_batch_size(100) == 3


def test_eval_unknown_task_is_a_clear_error(tmp_path):
    assert main(["eval", "--tasks", "no_such_task_xyz", "--include_path", str(TASKS), "--output_path", str(tmp_path)]) == 1


def test_use_cache_answers_a_rerun_from_the_cache(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    argv = ["eval", "--model", str(tiny_dir), "--dtype", "float32", "--tasks", "layerskip_code_completion",
            "--include_path", str(TASKS), "--limit", "2", "--use_cache", str(tmp_path / "cache"),
            "--output_path", str(tmp_path / "out"), "--no_progress", "True"]
    assert main(argv) == 0
    assert main(argv) == 0
    runs = sorted(tmp_path.glob("out/*/results_*.json"))
    assert len(runs) == 2
    first, second = (json.loads(p.read_text())["layerskip"]["speed"]["generation_requests"] for p in runs)
    assert (first, second) == (2, 0)
