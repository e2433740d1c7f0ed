"""Mistral and Qwen2 checkpoints run in the same engine: logits and greedy output equal
transformers' own MistralForCausalLM / Qwen2ForCausalLM on tiny random checkpoints they saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_tokenizer

from layerskip.cli import main
from layerskip.errors import LayerskipError
from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.decoding.limits import check_fits
from layerskip.checkpoints.loading import load, load_model
from layerskip.decoding.sampling import SamplingConfig
from layerskip.training.tokenizer_training import save_tokenizer

SIZES = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=0, eos_token_id=1, pad_token_id=2)


def save_checkpoint(directory: Path, architecture: str, **extra) -> Path:
    """A random tiny ``architecture`` checkpoint written by transformers itself, with a tokenizer;
    biases (Qwen2's q/k/v) drawn non-zero so that a dropped bias changes the logits."""
    import transformers

    config_class = getattr(transformers, f"{architecture}Config")
    model_class = getattr(transformers, f"{architecture}ForCausalLM")
    torch.manual_seed(0)
    model = model_class(config_class(**SIZES, **extra)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    model.save_pretrained(str(directory))
    save_tokenizer(make_tokenizer(300), directory)
    return directory


CASES = {"mistral": ("Mistral", {"sliding_window": None}), "qwen2": ("Qwen2", {})}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    architecture, extra = CASES[request.param]
    return architecture, save_checkpoint(tmp_path_factory.mktemp(request.param), architecture, **extra)


def reference_model(architecture: str, directory: Path):
    import transformers

    return getattr(transformers, f"{architecture}ForCausalLM").from_pretrained(str(directory), dtype=torch.float32).eval()


def test_qwen2_checkpoint_has_qkv_bias_and_no_o_bias(tmp_path: Path) -> None:
    directory = save_checkpoint(tmp_path, "Qwen2")
    ours = load_model(directory, torch.device("cpu"), torch.float32)
    attention = ours.model.layers[0].self_attn
    assert attention.q_proj.bias is not None and attention.o_proj.bias is None
    assert ours.config.to_hf_dict()["architectures"] == ["Qwen2ForCausalLM"]


def test_logits_match_transformers(checkpoint: tuple[str, Path]) -> None:
    architecture, directory = checkpoint
    reference = reference_model(architecture, directory)
    ours = load(str(directory), "cpu", "float32").model  # prepared for inference: fused q/k/v (with bias)
    tokens = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), reference(tokens).logits, atol=2e-5, rtol=1e-4)


def test_greedy_output_matches_transformers(checkpoint: tuple[str, Path], capsys: pytest.CaptureFixture) -> None:
    """Autoregressive output equals transformers' greedy ``generate``; self-speculative equals both."""
    architecture, directory = checkpoint
    reference = reference_model(architecture, directory)
    reference.generation_config.eos_token_id = None
    loaded = load(str(directory), "cpu", "float32")
    prompt = loaded.tokenizer("def fib(n):")["input_ids"]
    with torch.no_grad():
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=2)
    expected_ids = expected[0, len(prompt):].tolist()
    config = GenerationConfig(max_steps=24, sampling=SamplingConfig(sample=False))
    assert generate(loaded.model, prompt, config).token_ids == expected_ids
    code = main(["generate", "--model", str(directory), "--dtype", "float32", "--prompt", "def fib(n):", "--sample", "False",
                 "--max_steps", "24", "--generation_strategy", "self_speculative", "--exit_layer", "2",
                 "--num_speculations", "3", "--json", "True"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    stop = expected_ids.index(1) + 1 if 1 in expected_ids else len(expected_ids)  # it stops at EOS (1)
    assert record["token_ids"] == expected_ids[:stop]
    assert record["stats"]["drafted_tokens"] > 0


def test_mistral_sliding_window_bounds_the_context(tmp_path: Path) -> None:
    directory = save_checkpoint(tmp_path, "Mistral", sliding_window=32)
    model = load_model(directory, torch.device("cpu"), torch.float32)
    assert model.config.context_limit == 32
    check_fits(model, 20, 12)
    with pytest.raises(LayerskipError, match="sliding_window 32"):
        check_fits(model, 20, 13)
