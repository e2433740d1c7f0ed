"""Tiny checkpoints written with transformers' ``save_pretrained`` (parity reference) for the tests."""

from __future__ import annotations

from pathlib import Path

import torch

from layerskip.tokenizer_training import save_tokenizer, train_bpe_tokenizer

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "The quick brown fox jumps over the lazy dog. Hello world! é ü 中文\n",
] * 20


def write_corpus(directory: Path, repeat: int = 4) -> Path:
    """Ten small Python files (``CORPUS`` entries, each repeated) in ``directory``."""
    for i, text in enumerate(CORPUS[:10]):
        (directory / f"doc{i}.py").write_text(text * repeat)
    return directory


def make_tokenizer(vocab_size: int = 300):
    return train_bpe_tokenizer(CORPUS, vocab_size=vocab_size, min_frequency=1)


def make_checkpoint(
    directory: Path,
    *,
    seed: int = 0,
    vocab_size: int = 300,
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    tie: bool = False,
    bias: bool = False,
    rope_scaling: dict | None = None,
    rope_theta: float = 10000.0,
    max_shard_size: str | None = None,
    with_tokenizer: bool = True,
    init_std: float = 0.02,
) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer(vocab_size) if with_tokenizer else None
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,  # every HumanEval prompt fits, in the tiny byte-level tokenizer too
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie,
        attention_bias=bias,
        mlp_bias=bias,
        initializer_range=init_std,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    if bias:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0, 0.02)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(directory), **kwargs)
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)
    return directory


def dampen_layers(model, first: int, factor: float) -> None:
    """Scale the residual contributions (o_proj, down_proj) of layers ``first..`` by ``factor``,
    so that early exits agree with the full model more (factor 0: exactly)."""
    with torch.no_grad():
        for layer in model.model.layers[first:]:
            layer.self_attn.o_proj.weight.mul_(factor)
            layer.mlp.down_proj.weight.mul_(factor)
