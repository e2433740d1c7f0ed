"""``layerskip.training.self_generated`` and ``layerskip self-generate``: the model's own greedy
continuations of corpus prefixes, batched, written as produced, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, run_cli, write_corpus

from layerskip.cli import main
from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.loop import generate, generate_many
from layerskip.checkpoints.loading import load_tokenizer
from layerskip.training.self_generated import (
    corpus_prefixes,
    training_prefixes,
    existing_records,
    write_self_generated_corpus,
)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("selfgen_corpus"), 6)


def test_prefixes_are_seeded_windows_of_the_stream():
    stream = torch.arange(100, dtype=torch.int32)
    a, b = corpus_prefixes(stream, 5, 8, seed=3), corpus_prefixes(stream, 5, 8, seed=3)
    assert a.shape == (5, 8) and a.dtype == torch.long and torch.equal(a, b)
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(5, 7, dtype=torch.long))  # contiguous windows
    assert not torch.equal(a, corpus_prefixes(stream, 5, 8, seed=4))


def test_rows_of_different_lengths_each_get_their_batch_of_one_output(tiny_model):
    """Every row of a mixed-length batch decodes as it would alone."""
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (9, 2, 5)]
    results, summary = generate_many(tiny_model, prompts, GenerationConfig(max_steps=12))
    assert summary.generated_tokens == 36
    for result, prompt in zip(results, prompts):
        assert result.token_ids == generate(tiny_model, prompt, GenerationConfig(max_steps=12)).token_ids


def test_corpus_file_holds_prefix_and_continuation_and_resumes(tiny_model, tiny_dir, corpus_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_dir)
    out = tmp_path / "gen.jsonl"
    prefixes = training_prefixes(tokenizer, str(corpus_dir), 5, 6, seed=1)
    assert torch.equal(prefixes, training_prefixes(tokenizer, str(corpus_dir), 5, 6, seed=1))
    args = (tiny_model, tokenizer, prefixes, out, 4)
    assert write_self_generated_corpus(*args, batch_size=2) == 5
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4] and all(r["prefix_tokens"] == 6 for r in records)
    for record, prefix in zip(records, prefixes.tolist()):
        continuation = generate(tiny_model, prefix, GenerationConfig(max_steps=4)).token_ids
        assert record["text"] == tokenizer.decode(prefix + continuation, skip_special_tokens=False)

    # an interrupted file (last record cut mid-line) resumes where it stopped, with the same records
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:10])
    assert existing_records(out) == 3 and len(out.read_text().splitlines()) == 3
    calls: list[int] = []
    assert write_self_generated_corpus(*args, batch_size=2, on_batch=calls.append) == 5
    assert calls == [2] and out.read_text().splitlines(keepends=True) == lines


def test_cli_writes_the_corpus_and_rejects_bad_input(tiny_dir, corpus_dir, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    common = ["self-generate", "--model", str(tiny_dir), "--corpus", str(corpus_dir), "--output", str(out),
              "--prefix_tokens", "5", "--new_tokens", "3", "--batch_size", "4", "--dtype", "float32", "--no_progress",
              "--text_field", "code"]
    assert main([*common, "--num_sequences", "6"]) == 0
    assert f"{out}: 6 sequences" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and all(set(r) == {"code", "prefix_tokens", "index"} for r in records)
    assert_one_line_error(run_cli(*common, "--num_sequences", "0"), "--num_sequences must be >= 1, got 0")
    assert_one_line_error(run_cli(*common, "--num_sequences", "2", "--batch_size", "0"), "--batch_size must be >= 1, got 0")
    assert_one_line_error(run_cli("self-generate", "--model", str(tiny_dir), "--corpus", str(tmp_path / "missing"),
                                  "--output", str(tmp_path / "x.jsonl")), "no files found")


def test_cli_continues_whole_prompts_of_any_length(tiny_dir, tiny_model, tmp_path, capsys):
    """--prompts: each record's text is continued as the harness would tokenize it, whatever its length."""
    tokenizer = load_tokenizer(tiny_dir)
    prompts = tmp_path / "prompts.jsonl"
    texts = ["def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n", "x = 1", "class A:\n    pass\n\n\ndef f():\n"]
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "greedy.jsonl"
    assert main(["self-generate", "--model", str(tiny_dir), "--prompts", str(prompts), "--output", str(out),
                 "--num_sequences", "10", "--new_tokens", "5", "--batch_size", "2", "--dtype", "float32",
                 "--no_progress", "True"]) == 0
    assert f"{out}: 3 sequences" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for record, text in zip(records, texts):
        ids = tokenizer(text)["input_ids"]
        alone = generate(tiny_model, ids, GenerationConfig(max_steps=5)).token_ids
        assert record["prefix_tokens"] == len(ids)
        assert record["text"] == tokenizer.decode(ids + alone, skip_special_tokens=False)
    (tmp_path / "empty.jsonl").write_text(json.dumps({"code": "x"}) + "\n")
    assert_one_line_error(run_cli("self-generate", "--model", str(tiny_dir), "--prompts", str(tmp_path / "empty.jsonl"),
                                  "--output", str(tmp_path / "y.jsonl")), "no text in field 'text'")


def test_a_continuation_ends_at_its_first_stop_token(tiny_model, tiny_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_dir)
    prefix = [5, 6, 7, 8]
    full = generate(tiny_model, prefix, GenerationConfig(max_steps=8)).token_ids
    stop = full[2]
    cut = full[: full.index(stop) + 1]
    out = tmp_path / "stopped.jsonl"
    write_self_generated_corpus(tiny_model, tokenizer, [prefix], out, 8, 1, stop_token_ids=frozenset({stop}))
    assert json.loads(out.read_text())["text"] == tokenizer.decode(prefix + cut, skip_special_tokens=False)


def test_chat_prompts_are_answered_as_user_turns(tiny_chat_dir, tiny_dir, tmp_path, capsys):
    """--apply_chat_template: each text is one user turn through the chat template, continued greedily
    as the model's answer; it needs --prompts and a tokenizer with a template."""
    from layerskip.checkpoints.loading import load
    from layerskip.decoding.chat import single_turn

    loaded = load(str(tiny_chat_dir), dtype="float32")
    prompts = tmp_path / "questions.jsonl"
    questions = ["What is a list?", "Name three colours."]
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions))
    out = tmp_path / "answers.jsonl"
    assert main(["self-generate", "--model", str(tiny_chat_dir), "--prompts", str(prompts), "--text_field", "prompt",
                 "--apply_chat_template", "True", "--output", str(out), "--new_tokens", "4", "--batch_size", "2",
                 "--dtype", "float32", "--no_progress", "True"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for record, question in zip(records, questions, strict=True):
        ids = single_turn(loaded.tokenizer, question)
        answer = generate(loaded.model, ids, GenerationConfig(max_steps=4)).token_ids
        assert record["prefix_tokens"] == len(ids)
        assert record["prompt"] == loaded.tokenizer.decode(ids + answer, skip_special_tokens=False)
    capsys.readouterr()
    assert_one_line_error(run_cli("self-generate", "--model", str(tiny_chat_dir), "--apply_chat_template", "True",
                                  "--output", str(tmp_path / "z.jsonl")), "--apply_chat_template True needs --prompts")
    assert_one_line_error(run_cli("self-generate", "--model", str(tiny_dir), "--prompts", str(prompts), "--text_field",
                                  "prompt", "--apply_chat_template", "True", "--output", str(tmp_path / "w.jsonl")),
                          "has no chat template")
