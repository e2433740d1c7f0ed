"""Tiny checkpoints written with transformers' ``save_pretrained`` (parity reference) for the tests."""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from layerskip.training.tokenizer_training import save_tokenizer, train_bpe_tokenizer

@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, stdin: str | None = None) -> CliResult:
    """``layerskip ARGS`` in this process (``layerskip.cli.main``), with its exit status, stdout and
    stderr: argparse's exit (status 2) included; warnings are ignored as the CLI's users see them."""
    from layerskip.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = saved_stdin
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc: CliResult, needle: str) -> None:
    """A non-zero exit whose stderr is exactly one line, containing ``needle``, and no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], proc.stderr


CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for i in range(10):\n    print(i * i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "The quick brown fox jumps over the lazy dog. Hello world! é ü 中文\n",
] * 20

# A ChatML-like template that writes the BOS token itself (as Llama 3's does).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


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
    chat_template: str | None = None,
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
        tokenizer.chat_template = chat_template
        save_tokenizer(tokenizer, directory)
    return directory


def dampen_layers(model, first: int, factor: float) -> None:
    """Scale the residual contributions (o_proj, down_proj) of layers ``first..`` by ``factor``,
    so that early exits agree with the full model more (factor 0: exactly)."""
    with torch.no_grad():
        for layer in model.model.layers[first:]:
            layer.self_attn.o_proj.weight.mul_(factor)
            layer.mlp.down_proj.weight.mul_(factor)



def _permute_rows(weight, heads: int):
    """llama.cpp's q/k row order (``convert_hf_to_gguf.py``'s ``permute``), which GGUF readers undo."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(checkpoint: Path, path: Path, *, architecture: str = "llama", quantize: dict[str, str] | None = None,
               chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """The tiny checkpoint ``checkpoint`` (from ``make_checkpoint``) as a GGUF file, as llama.cpp's
    converter writes one: llama metadata, a byte-level BPE (``gpt2``) vocabulary with merges, q/k rows
    permuted. ``quantize`` maps GGUF tensor-name suffixes (``ffn_up.weight``) to a quantization type
    name (``Q8_0``; ``Q8_1`` is written as raw zero blocks, a type gguf cannot dequantize); other
    tensors are F32."""
    import json

    import gguf
    import numpy as np
    from safetensors.torch import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    tok = json.loads((checkpoint / "tokenizer.json").read_text())
    state = {k: v.float().numpy() for k, v in load_file(str(checkpoint / "model.safetensors")).items()}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta") or config["rope_parameters"]["rope_theta"])
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_vocab_size(config["vocab_size"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda item: item[1])
    special = {t["id"] for t in tok["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if i in special else 1 for _, i in vocab])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(True)
    if chat_template:
        writer.add_chat_template(chat_template)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    if not config.get("tie_word_embeddings"):
        tensors["output.weight"] = state["lm_head.weight"]
    for i in range(config["num_hidden_layers"]):
        for hf, short in names.items():
            weight = state[f"model.layers.{i}.{hf}.weight"]
            if short in ("attn_q", "attn_k"):
                weight = _permute_rows(weight, heads if short == "attn_q" else kv_heads)
            tensors[f"blk.{i}.{short}.weight"] = weight
    for name, weight in tensors.items():
        kind = next((q for suffix, q in (quantize or {}).items() if name.endswith(suffix)), None)
        if kind is None:
            writer.add_tensor(name, np.ascontiguousarray(weight, dtype=np.float32))
        elif kind == "Q8_1":
            block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1]
            raw = np.zeros((weight.shape[0], weight.shape[1] // block * size), dtype=np.uint8)
            writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.Q8_1)
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            writer.add_tensor(name, gguf.quantize(np.ascontiguousarray(weight, dtype=np.float32), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


GEMMA3_LAYER_TYPES = ("sliding_attention", "full_attention", "sliding_attention", "sliding_attention")


def make_gemma3_checkpoint(
    directory: Path,
    *,
    seed: int = 0,
    vocab_size: int = 300,
    window: int = 8,
    layer_types: tuple[str, ...] = GEMMA3_LAYER_TYPES,
    head_dim: int = 32,
    final_logit_softcapping: float | None = None,
) -> Path:
    """A tiny random Gemma 3 text decoder (``Gemma3ForCausalLM``) with the BPE tokenizer: local layers of
    ``window`` positions mixed with global ones, a ``query_pre_attn_scalar`` other than ``head_dim`` and
    random norm weights (so every (1 + w) scale and per-head q/k norm matters)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=len(layer_types),
        num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, sliding_window=window,
        layer_types=list(layer_types), max_position_embeddings=1024, query_pre_attn_scalar=24,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}},
        final_logit_softcapping=final_logit_softcapping, initializer_range=0.1, bos_token_id=0, eos_token_id=1,
        pad_token_id=2,
    )
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0, 0.3)
    model.save_pretrained(str(directory))
    save_tokenizer(make_tokenizer(vocab_size), directory)
    return directory
