"""Argument parsing shared by every subcommand.

Upstream's spellings work unchanged: underscores (``--exit_layer``), booleans written
``--sample True/False``, lists as several values (``--stop_words a b``). Dashes
(``--exit-layer``) are accepted too. Errors are one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error and no usage dump."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def add(parser: argparse.ArgumentParser | Any, name: str, **kwargs: Any) -> None:
    """Register ``--name`` (underscores) and its dashed alias."""
    flags = [f"--{name}"]
    if "_" in name:
        flags.append(f"--{name.replace('_', '-')}")
    if kwargs.get("type") is bool:
        kwargs["type"] = str2bool
        kwargs.setdefault("nargs", "?")
        kwargs.setdefault("const", True)
        kwargs.setdefault("metavar", "True|False")
    parser.add_argument(*flags, dest=name, **kwargs)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    add(group, "model", default=None, help="checkpoint directory, .gguf file (llama), name fetched with `layerskip fetch` or Hugging Face hub id "
             "(default: the shipped model)")
    add(group, "device", default="auto", help="auto | cpu | cuda")
    add(group, "dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 where the hardware runs it well, else float32")
    add(group, "quantize", default="none", choices=["none", "int8"],
        help="int8: weight-only int8 decoder projections (per-output-channel scales; LM head in --dtype)")
    add(group, "seed", type=int, default=42)
    add(group, "output_dir", default="./logs")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    add(group, "max_steps", type=int, default=512, help="maximum number of generated tokens")
    add(group, "generation_strategy", default="autoregressive", choices=["autoregressive", "self_speculative"])
    add(group, "exit_layer", type=int, default=None,
        help="draft exit layer (self_speculative, 1..L-1; default: the model's recommendation) "
        "or early-exit depth (autoregressive)")
    add(group, "num_speculations", type=int, default=None, help="draft tokens per verification (>= 1; default: the model's recommendation)")
    add(group, "sample", type=bool, default=True, help="sample (True) or greedy (False)")
    add(group, "temperature", type=float, default=0.6)
    add(group, "top_k", type=int, default=0, help="0 disables top-k")
    add(group, "top_p", type=float, default=0.9, help="1.0 disables top-p")
    add(group, "no_repeat_ngram_size", type=int, default=None)
    add(group, "stop_words", nargs="*", default=None, help="stop when any of these strings is generated")
    add(group, "stop_token_ids", type=int, nargs="*", default=None, help="extra token ids that end generation")
    drafts = parser.add_argument_group("draft strategies (see layerskip.exit_criteria, layerskip.draft_length)")
    add(drafts, "criteria", default=None,
        help="dynamic early exit: cosine_similarity, token_repeat (consistent_tokens), max_probability (logits_current), "
             "top2_margin, entropy_based, convergence, random, logits_future; --exit_layer is then the deepest exit")
    drafts.add_argument("--dynamic_early_exit_mode", "--dynamic-early-exit-mode", dest="criteria", help="alias of --criteria")
    add(drafts, "criteria_threshold", type=float, default=None, help="the criterion's threshold (default: its documented one)")
    add(drafts, "criteria_patience", type=int, default=None, help="token_repeat: consecutive layers that must agree (3)")
    add(drafts, "criteria_temperature", type=float, default=None, help="entropy_based: softmax temperature (1.0)")
    add(drafts, "criteria_high", type=float, default=None, help="logits_future: confidence that moves the exit down (0.9)")
    add(drafts, "criteria_low", type=float, default=None, help="logits_future: confidence that moves the exit up (0.5)")
    add(drafts, "skip_layers", default=None, help='layer-skip draft: \'{"attn": [..], "mlp": [..]}\' sublayers to skip')
    add(drafts, "layer_skip_proportion", type=float, default=None, help="layer-skip draft: skip each draft layer with this probability")
    add(drafts, "draft_length", default=None, choices=["fixed", "threshold", "heuristic"],
        help="fixed k; threshold: stop below a confidence (Draft & Verify, adapted online); heuristic: k+2 / k-1")
    add(drafts, "confidence_threshold", type=float, default=None, help="draft_length threshold: initial gamma (0.6)")
    add(drafts, "draft", default=None, choices=["model", "prompt_lookup", "prompt_lookup+model"],
        help="who drafts: model (default: early exit, layer skip, ...); prompt_lookup: the tokens that followed the latest "
             "earlier occurrence of the last n tokens (no exit layer needed; --num_speculations default 10 when the model "
             "recommends none); prompt_lookup+model: the lookup when it matches, the model's draft otherwise")
    add(drafts, "prompt_lookup_max_ngram", type=int, default=None, help="prompt lookup: longest n-gram matched first (3)")
    add(drafts, "prompt_lookup_min_ngram", type=int, default=None, help="prompt lookup: shortest n-gram tried (1)")
    add(drafts, "draft_config", default=None, help="a draft configuration JSON (from layerskip tune); flags override it")
    add(drafts, "draft_adapter", default=None,
        help="a trained draft adapter directory (layerskip train-adapter): draft = layers 0..E-1 + adapter + shared head")
    add(drafts, "draft_vocab", type=int, default=None,
        help="draft over only the N most frequent tokens (FR-Spec; ranking from the adapter or checkpoint directory)")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    from layerskip.evaluation.datasets import DATASETS

    group = parser.add_argument_group("dataset")
    add(group, "dataset", default="human_eval", choices=DATASETS)
    add(group, "data_path", default=None, help="local data: a JSONL file, a directory with test/train.jsonl, or a save_to_disk directory")
    add(group, "random_shuffle", type=bool, default=True)
    add(group, "num_samples", type=int, default=None)
    add(group, "n_shot", type=int, default=0)
    add(group, "template", default=None, help="format string with {message} wrapped around each prompt")
    add(group, "apply_chat_template", type=bool, default=False,
        help="send each prompt as one user turn of the tokenizer's chat template")
    add(group, "prompt_field", default="prompt", help="custom_jsonl: the prompt field")
    add(group, "response_field", default="response", help="custom_jsonl: the reference field")
    add(group, "no_progress", type=bool, default=False, help="no progress bar")
