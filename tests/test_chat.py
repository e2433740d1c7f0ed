"""Chat templates: the tokenizer's own template, no doubled BOS; ``generate --chat`` carries the
conversation on; ``--apply_chat_template`` on generate, benchmark and eval."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import layerskip.cli.generate as generate_cli
from layerskip.decoding.chat import Conversation, encode_chat, single_turn
from layerskip.cli import main
from layerskip.errors import LayerskipError
from layerskip.checkpoints.loading import load_tokenizer

TASKS = Path(__file__).parent / "lm_eval_tasks"
ROOT = Path(__file__).resolve().parents[1]
GREEDY = ["--dtype", "float32", "--sample", "False", "--max_steps", "5"]


@pytest.fixture(scope="module")
def tokenizer(tiny_chat_dir):
    return load_tokenizer(tiny_chat_dir)


def test_the_template_is_rendered_once_with_a_single_bos(tokenizer):
    ids = single_turn(tokenizer, "hello", system="be brief")
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    text = tokenizer.decode(ids)
    assert tokenizer(text)["input_ids"].count(tokenizer.bos_token_id) == 2  # what encoding with special tokens gives
    assert text == "<|begin_of_text|><|system|>\nbe brief<|end_of_text|>\n<|user|>\nhello<|end_of_text|>\n<|assistant|>\n"


def test_a_conversation_keeps_every_turn(tokenizer):
    chat = Conversation(tokenizer)
    chat.ask("one")
    chat.answer("reply")
    ids = chat.ask("two")
    expected = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "reply"},
                {"role": "user", "content": "two"}]
    assert chat.messages == expected and ids == encode_chat(tokenizer, expected)
    assert tokenizer.decode(ids).count("<|begin_of_text|>") == 1


def test_a_tokenizer_without_template_is_one_clear_error(tiny_dir, capsys):
    with pytest.raises(LayerskipError, match="no chat template"):
        single_turn(load_tokenizer(tiny_dir), "hi")
    assert main(["generate", "--model", str(tiny_dir), "--prompt", "hi", "--apply_chat_template", "True", *GREEDY]) == 1
    err = capsys.readouterr().err.strip()
    assert "no chat template" in err and len(err.splitlines()) == 1


def test_chat_and_system_flag_misuse_is_caught_before_loading(capsys):
    assert main(["generate", "--model", "/nonexistent", "--chat", "--prompt", "hi"]) == 1
    assert "--chat is interactive" in capsys.readouterr().err
    assert main(["generate", "--model", "/nonexistent", "--system", "be brief", "--prompt", "hi"]) == 1
    assert "--system needs" in capsys.readouterr().err


def spy_on_generate(monkeypatch) -> list[list[int]]:
    prompts: list[list[int]] = []
    real = generate_cli.generate

    def spy(model, prompt_ids, *args, **kwargs):
        prompts.append(list(prompt_ids))
        return real(model, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(generate_cli, "generate", spy)
    return prompts


def test_generate_chat_carries_the_conversation_on(tiny_chat_dir, tokenizer, monkeypatch, capsys):
    prompts = spy_on_generate(monkeypatch)
    monkeypatch.setattr("sys.stdin", io.StringIO("first question\nsecond question\n"))
    assert main(["generate", "--model", str(tiny_chat_dir), "--chat", "--system", "be brief", "--json", *GREEDY]) == 0
    first, second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first question"}]
    assert prompts[0] == encode_chat(tokenizer, messages)
    messages += [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": "second question"}]
    assert prompts[1] == encode_chat(tokenizer, messages)
    assert second["prompt"] == "second question"


def test_generate_apply_chat_template_wraps_the_prompt(tiny_chat_dir, tokenizer, monkeypatch, capsys):
    prompts = spy_on_generate(monkeypatch)
    assert main(["generate", "--model", str(tiny_chat_dir), "--prompt", "def add", "--apply_chat_template", "True",
                 "--json", *GREEDY]) == 0
    assert prompts == [single_turn(tokenizer, "def add")]
    assert main(["generate", "--model", str(tiny_chat_dir), "--prompt", "def add", "--json", *GREEDY]) == 0
    assert prompts[1] == tokenizer("def add")["input_ids"]


def test_benchmark_apply_chat_template_sends_each_prompt_as_a_user_turn(tiny_chat_dir, tokenizer, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "def add(a, b):", "response": " return a + b"}) + "\n")
    assert main(["benchmark", "--model", str(tiny_chat_dir), "--dataset", "custom_jsonl", "--data_path", str(data),
                 "--apply_chat_template", "True", "--output_dir", str(tmp_path), "--no_progress", "True", *GREEDY]) == 0
    (record,) = [json.loads(line) for line in next(tmp_path.glob("*_samples.jsonl")).read_text().splitlines()]
    assert record["prompt_tokens"] == len(single_turn(tokenizer, "def add(a, b):"))


def test_eval_apply_chat_template_runs_end_to_end(tiny_chat_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    contexts: list[str] = []
    from layerskip.evaluation.lm_eval_adapter import LayerskipLM

    real = LayerskipLM.generate_until

    def spy(self, requests, disable_tqdm=False):
        contexts.extend(r.args[0] for r in requests)
        return real(self, requests, disable_tqdm)

    monkeypatch.setattr(LayerskipLM, "generate_until", spy)
    code = main(["eval", "--model", str(tiny_chat_dir), "--tasks", "layerskip_code_completion", "layerskip_code_choice",
                 "--include_path", str(TASKS), "--apply_chat_template", "True", "--limit", "2", "--dtype", "float32",
                 "--output_dir", str(tmp_path)])
    assert code == 0
    doc = json.loads(next(tmp_path.glob("*/results_*.json")).read_text())
    assert "exact_match,none" in doc["results"]["layerskip_code_completion"]
    assert "acc,none" in doc["results"]["layerskip_code_choice"]
    assert len(contexts) == 2 and all(c.startswith("<|begin_of_text|><|user|>\n") for c in contexts)
    assert all(c.endswith("<|assistant|>\n") for c in contexts)
