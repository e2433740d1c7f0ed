"""The model shipped in the package: loads in transformers with the same logits, is the default
``--model``, and its recommended draft settings are used when the flags are omitted."""

from __future__ import annotations

import json

import torch

from layerskip.cli import main
from layerskip.checkpoints.loading import default_model_path, load_model, recommended_settings


def test_shipped_model_is_small_and_has_a_card_and_recommendation():
    path = default_model_path()
    assert (path / "model.safetensors").stat().st_size <= 25 * 1024 * 1024
    assert (path / "MODEL_CARD.md").exists()
    rec = recommended_settings(path)
    cfg = json.loads((path / "config.json").read_text())
    assert 1 <= rec["exit_layer"] < cfg["num_hidden_layers"] and rec["num_speculations"] >= 1


def test_shipped_model_matches_transformers_logits():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path()
    reference = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ours = load_model(path, torch.device("cpu"), torch.float32)
    ids = AutoTokenizer.from_pretrained(str(path))("def fib(n):\n    ", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(ids).logits, atol=1e-4, rtol=1e-4)


def test_generate_without_model_flag_uses_shipped_model_and_its_recommendation(capsys):
    base = ["generate", "--prompt", "def fib(n):", "--max_steps", "40", "--sample", "False", "--json", "--dtype", "float32"]
    assert main(base) == 0
    ar = json.loads(capsys.readouterr().out)
    assert main([*base, "--generation_strategy", "self_speculative"]) == 0
    sp = json.loads(capsys.readouterr().out)
    rec = recommended_settings(default_model_path())
    assert sp["model"] == str(default_model_path())
    assert sp["stats"]["exit_layer"] == rec["exit_layer"]
    assert sp["stats"]["num_speculations"] == rec["num_speculations"]
    assert sp["token_ids"] == ar["token_ids"]
    assert sp["text"].strip()
