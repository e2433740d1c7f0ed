"""A sweep over bad inputs to every command: one short stderr line, a non-zero exit, no traceback.

Run in-process through ``layerskip.cli.main``; each case fails before any generation or training.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import write_corpus
from safetensors.torch import load_file, save_file

from layerskip.cli import main


@pytest.fixture(scope="module")
def env(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint, damaged copies of it, bad settings and data files, keyed by name."""
    root = tmp_path_factory.mktemp("bad")

    def variant(name: str, config: dict | None = None, files: dict[str, str | bytes] | None = None) -> Path:
        directory = root / name
        shutil.copytree(tiny_dir, directory)
        if config:
            raw = json.loads((directory / "config.json").read_text())
            (directory / "config.json").write_text(json.dumps(raw | config))
        for file, content in (files or {}).items():
            (directory / file).write_bytes(content if isinstance(content, bytes) else content.encode())
        return directory

    def file(name: str, content: str | bytes) -> Path:
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return root / name

    nan = variant("nan_weights")
    weights = load_file(str(nan / "model.safetensors"))
    save_file({k: torch.full_like(v, float("nan")) for k, v in weights.items()}, str(nan / "model.safetensors"))
    (root / "corpus").mkdir()
    return {
        "tiny": tiny_dir, "root": root, "nan": nan, "corpus": write_corpus(root / "corpus", 1),
        "a_file": file("a_file", "x"),
        "layers0": variant("layers0", {"num_hidden_layers": 0}),
        "layers_frac": variant("layers_frac", {"num_hidden_layers": 2.5}),
        "layers_str": variant("layers_str", {"num_hidden_layers": "two"}),
        "vocab_huge": variant("vocab_huge", {"vocab_size": 10 ** 12}),
        "heads0": variant("heads0", {"num_attention_heads": 0}),
        "maxpos_null": variant("maxpos_null", {"max_position_embeddings": None}),
        "rope_nan": variant("rope_nan", {"rope_theta": float("nan")}),
        "config_bytes": variant("config_bytes", files={"config.json": b"\xff{}"}),
        "rec_str": variant("rec_str", files={"layerskip.json": '{"recommended": {"exit_layer": "two", "num_speculations": 2}}'}),
        "rec_list": variant("rec_list", files={"layerskip.json": "[1]"}),
        "rec_bytes": variant("rec_bytes", files={"layerskip.json": b"\xff"}),
        "shard_outside": variant("shard_outside", files={"model.safetensors.index.json": json.dumps(
            {"weight_map": {"w": "../tiny/model.safetensors"}})}),
        "shard_absolute": variant("shard_absolute", files={"model.safetensors.index.json": json.dumps(
            {"weight_map": {"w": "/etc/passwd"}})}),
        "dc_str": file("dc_str.json", '{"exit_layer": "two", "num_speculations": 2}'),
        "dc_list": file("dc_list.json", '{"exit_layer": [1], "num_speculations": 2}'),
        "dc_frac": file("dc_frac.json", '{"exit_layer": 2.7, "num_speculations": 2}'),
        "dc_neg_k": file("dc_neg_k.json", '{"exit_layer": 1, "num_speculations": -2}'),
        "dc_nan": file("dc_nan.json", '{"exit_layer": 2, "num_speculations": 2, "criteria": "entropy_based", "threshold": NaN}'),
        "dc_bytes": file("dc_bytes.json", b'{"exit_layer": "\xff"}'),
        "dc_skip_frac": file("dc_skip_frac.json", '{"exit_layer": 2, "num_speculations": 2, "skip_attn": [1.5]}'),
        "dc_array": file("dc_array.json", "[2, 2]"),
        "data_bytes": file("data_bytes.jsonl", b'{"prompt": "\xff", "response": "x"}\n'),
        "data_dup": file("data_dup.jsonl", '{"id": 1, "prompt": "a", "response": "b"}\n{"id": 1, "prompt": "c", "response": "d"}\n'),
        "data_id_null": file("data_id_null.jsonl", '{"id": null, "prompt": "a", "response": "b"}\n'),
        "data_id_list": file("data_id_list.jsonl", '{"id": [1], "prompt": "a", "response": "b"}\n'),
        "data_int": file("data_int.jsonl", '{"prompt": 5, "response": "b"}\n'),
        "data_array": file("data_array.jsonl", "[1, 2]\n"),
        "data_missing": file("data_missing.jsonl", '{"x": 1}\n'),
        "corpus_bytes": file("corpus_bytes.jsonl", b'{"text": "\xff"}\n'),
        "notes": file("notes.txt", "my notes\n"),
    }


def gen(env, *extra: str, model: str = "tiny") -> list[str]:
    return ["generate", "--model", str(env[model]), "--prompt", "hi", "--max_steps", "4", "--dtype", "float32", *extra]


def spec(env, *extra: str, model: str = "tiny") -> list[str]:
    return gen(env, "--generation_strategy", "self_speculative", *extra, model=model)


def bench(env, *extra: str) -> list[str]:
    return ["benchmark", "--model", str(env["tiny"]), "--max_steps", "4", "--num_samples", "1", "--dtype", "float32",
            "--no_progress", "True", "--output_dir", str(env["root"] / "logs"), *extra]


def custom(env, name: str) -> list[str]:
    return bench(env, "--dataset", "custom_jsonl", "--data_path", str(env[name]))


def train(env, *extra: str) -> list[str]:
    return ["train", "--corpus", str(env["corpus"]), "--output_dir", str(env["root"] / "train"), "--steps", "1", *extra]


CASES = {
    # flags
    "temperature nan": (lambda e: gen(e, "--temperature", "nan"), "--temperature must be a finite number"),
    "temperature inf": (lambda e: gen(e, "--temperature", "inf"), "--temperature must be a finite number"),
    "temperature denormal": (lambda e: gen(e, "--temperature", "1e-310"), "too small"),
    "top_p above 1": (lambda e: gen(e, "--top_p", "2"), "top_p must be in (0, 1]"),
    "threshold nan": (lambda e: gen(e, "--criteria", "entropy_based", "--criteria_threshold", "nan"), "--criteria_threshold must be a finite"),
    "exit layer -2": (lambda e: gen(e, "--exit_layer", "-2"), "--exit_layer must be >= 1 (or -1"),
    "k -3": (lambda e: spec(e, "--exit_layer", "1", "--num_speculations", "-3"), "--num_speculations must be >= 1 (or -1"),
    "exit layer fraction": (lambda e: gen(e, "--exit_layer", "2.7"), "invalid int value"),
    "max_steps 0": (lambda e: gen(e, "--max_steps", "0"), "--max_steps must be >= 1"),
    "stop id negative": (lambda e: gen(e, "--stop_token_ids", "-5"), "--stop_token_ids must be >= 0"),
    "stop id past the vocabulary": (lambda e: gen(e, "--stop_token_ids", "99999999"), "--stop_token_ids 99999999 is outside the vocabulary"),
    "seed negative": (lambda e: gen(e, "--seed", "-1"), "--seed must be >= 0"),
    "cuda without CUDA": (lambda e: gen(e, "--device", "cuda:0"), "no CUDA device"),
    "device nonsense": (lambda e: gen(e, "--device", "cuda:x"), "unknown device"),
    "prompt not UTF-8": (lambda e: [*gen(e)[:4], "hi\udcff", *gen(e)[5:]], "--prompt: not valid UTF-8"),
    "num_samples 0": (lambda e: bench(e, "--num_samples", "0"), "--num_samples must be >= 1"),
    # limits and values found only in the model
    "max_steps past positions": (lambda e: gen(e, "--max_steps", "10000000"), "at most --max_steps"),
    "prompt past positions": (lambda e: [*gen(e)[:4], "x " * 100000, *gen(e)[5:]], "shorten the prompt"),
    "nan weights": (lambda e: gen(e, "--sample", "False", model="nan"), "logits on the prompt are not finite"),
    # --draft_config files
    "draft exit_layer string": (lambda e: spec(e, "--draft_config", str(e["dc_str"])), "exit_layer must be an integer, got 'two'"),
    "draft exit_layer list": (lambda e: spec(e, "--draft_config", str(e["dc_list"])), "exit_layer must be an integer, got [1]"),
    "draft exit_layer fraction": (lambda e: spec(e, "--draft_config", str(e["dc_frac"])), "exit_layer must be an integer, got 2.7"),
    "draft negative k": (lambda e: spec(e, "--draft_config", str(e["dc_neg_k"])), "--num_speculations must be >= 1"),
    "draft NaN threshold": (lambda e: spec(e, "--draft_config", str(e["dc_nan"])), "threshold must be a finite number"),
    "draft not UTF-8": (lambda e: spec(e, "--draft_config", str(e["dc_bytes"])), "invalid JSON"),
    "draft skip fraction": (lambda e: spec(e, "--draft_config", str(e["dc_skip_frac"])), "skip_attn must be an integer"),
    "draft array": (lambda e: spec(e, "--draft_config", str(e["dc_array"])), "expected a JSON object"),
    # layerskip.json
    "recommended string": (lambda e: spec(e, model="rec_str"), "recommended setting: exit_layer must be an integer"),
    "recommended array": (lambda e: gen(e, model="rec_list"), "expected a JSON object"),
    "recommended not UTF-8": (lambda e: gen(e, model="rec_bytes"), "invalid JSON"),
    # config.json and shards
    "zero layers": (lambda e: gen(e, model="layers0"), "num_hidden_layers must be in [1, 1024], got 0"),
    "fractional layers": (lambda e: gen(e, model="layers_frac"), "num_hidden_layers must be an integer, got 2.5"),
    "layers string": (lambda e: gen(e, model="layers_str"), "num_hidden_layers must be an integer, got 'two'"),
    "absurd vocab": (lambda e: gen(e, model="vocab_huge"), "vocab_size must be in"),
    "zero heads": (lambda e: gen(e, model="heads0"), "num_attention_heads must be in"),
    "null positions": (lambda e: gen(e, model="maxpos_null"), "max_position_embeddings must be an integer, got None"),
    "nan rope theta": (lambda e: gen(e, model="rope_nan"), "rope_theta must be a finite number"),
    "config not UTF-8": (lambda e: gen(e, model="config_bytes"), "invalid JSON"),
    "shard outside the checkpoint": (lambda e: gen(e, model="shard_outside"), "lies outside"),
    "shard absolute path": (lambda e: gen(e, model="shard_absolute"), "lies outside"),
    # datasets, templates, output locations
    "data not UTF-8": (lambda e: custom(e, "data_bytes"), "data_bytes.jsonl:1: not valid UTF-8"),
    "duplicate ids": (lambda e: custom(e, "data_dup"), "duplicate sample id '1'"),
    "id null": (lambda e: custom(e, "data_id_null"), "'id' must be a string or an integer, got None"),
    "id list": (lambda e: custom(e, "data_id_list"), "'id' must be a string or an integer, got [1]"),
    "prompt not a string": (lambda e: custom(e, "data_int"), "prompt must be strings"),
    "record not an object": (lambda e: custom(e, "data_array"), "expected a JSON object"),
    "fields missing": (lambda e: custom(e, "data_missing"), "missing field(s) prompt, response"),
    "template unknown field": (lambda e: bench(e, "--template", "{nope} {message}"), "unknown field(s) {nope}"),
    "template unbalanced": (lambda e: bench(e, "--template", "{message"), "--template: expected '}'"),
    "template without message": (lambda e: bench(e, "--template", "hello"), "must contain {message}"),
    "output dir is a file": (lambda e: bench(e, "--output_dir", str(e["a_file"])), "exists and is not a directory"),
    "output dir under a file": (lambda e: bench(e, "--output_dir", str(e["a_file"] / "sub")), "not writable"),
    "code execution off human_eval": (lambda e: custom(e, "data_dup") + ["--allow_code_execution", "True"], "only applies to --dataset human_eval"),
    "resume an unrelated file": (lambda e: bench(e, "--resume", str(e["notes"])), "not a run written by layerskip benchmark"),
    # train and self-generate
    "train lr nan": (lambda e: train(e, "--lr", "nan"), "--lr must be a finite number"),
    "train zero heads": (lambda e: train(e, "--num_heads", "0"), "--num_heads must be >= 1"),
    "train absurd vocab": (lambda e: train(e, "--vocab_size", str(10 ** 12)), "--vocab_size must be in"),
    "train zero layers": (lambda e: train(e, "--num_layers", "0"), "--num_layers must be in"),
    "train output is a file": (lambda e: train(e, "--output_dir", str(e["a_file"])), "exists and is not a directory"),
    "train corpus not UTF-8": (lambda e: train(e, "--corpus", str(e["corpus_bytes"])), "corpus_bytes.jsonl:1: not valid UTF-8"),
    "self-generate into a directory": (lambda e: ["self-generate", "--model", str(e["tiny"]), "--output", str(e["root"])], "is a directory"),
    "self-generate over a text file": (lambda e: ["self-generate", "--model", str(e["tiny"]), "--corpus", str(e["corpus"]),
                                                  "--output", str(e["notes"]), "--num_sequences", "1", "--prefix_tokens", "4",
                                                  "--new_tokens", "2"], "was not written by layerskip self-generate"),
    "tune budget nan": (lambda e: ["tune", "--model", str(e["tiny"]), "--time_budget", "nan"], "--time_budget must be a finite number"),
}


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(env, capsys, name):
    build, needle = CASES[name]
    capsys.readouterr()
    code = run(build(env))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert needle in lines[0] and len(lines[0]) < 400, lines[0]


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])  # surrogateescape: a real stdin in the POSIX locale
def test_interactive_stdin_not_utf8_is_one_line(env, capsys, monkeypatch, errors):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe prompt\n"), encoding="utf-8", errors=errors))
    argv = gen(env)
    assert run(argv[:3] + argv[5:]) == 1  # no --prompt: interactive
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "not valid UTF-8" in lines[0]
