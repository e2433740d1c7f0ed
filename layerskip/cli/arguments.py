"""Argument parsing shared by every subcommand.

One flag style everywhere, upstream's: underscores (``--exit_layer``), booleans written
``--sample True|False`` (a boolean flag alone means True), lists as several values
(``--stop_words a b``). Dashes (``--exit-layer``) are accepted too. ``--output_dir DIR`` names a
directory of results, ``--output FILE`` a single file. Every flag has help, and ``--help`` shows its
default. Errors are one line on stderr naming the subcommand, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any, Mapping, NoReturn, Sequence

from layerskip.checkpoints.loading import DTYPES
from layerskip.decoding.strategy import NAMES
from layerskip.drafters.config import DRAFT_CONTROLS, DRAFTS
from layerskip.drafters.length import LENGTH_POLICIES
from layerskip.kernels.linear import QUANTIZATIONS
from layerskip.validation import field_types


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error and no usage dump."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


class SubcommandParser(ArgumentParser):
    """A subcommand's parser: unknown flags are its error (``layerskip generate: error: ...``),
    not the top-level parser's."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; each flag's help ends with its default (unless the
    help states it; an unset default shows as ``none``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text.lower() or default is argparse.SUPPRESS or not action.option_strings:
            return text
        if default is None:
            default = "none"
        elif isinstance(default, (list, tuple)):
            default = " ".join(str(d) for d in default) or "none"
        return f"{text} (default: {str(default).replace('%', '%%')})".strip()


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Setting name -> the flag of ``parser`` that sets it (its underscore spelling): what library errors'
    backticked names become at the command line (``layerskip.errors.named_as_flags``)."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and "-" not in option[2:]:
                flags.setdefault(option[2:], option)
                flags.setdefault(action.dest, option)
    return flags


def subcommand(subparsers: argparse._SubParsersAction, name: str, summary: str, description: str,
               example: str) -> argparse.ArgumentParser:
    """The parser of ``layerskip NAME``: a one-line ``summary`` for the command list, a
    ``description`` and one ``example`` for its ``--help``."""
    return subparsers.add_parser(name, help=summary, description=description, epilog=f"example:\n  {example}",
                                 formatter_class=HelpFormatter)


def criteria_name(value: str) -> str | None:
    """A criterion name; ``none`` (the fork's spelling of no dynamic exit) is no criterion."""
    return None if value.strip().lower() == "none" else value


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def add(parser: argparse.ArgumentParser | Any, name: str, *aliases: str, **kwargs: Any) -> None:
    """Register ``--name`` (underscores), its dashed spelling and ``aliases`` (other names, same rule)."""
    flags: list[str] = []
    for spelling in (name, *aliases):
        flags += [f"--{spelling}"] + ([f"--{spelling.replace('_', '-')}"] if "_" in spelling else [])
    if kwargs.get("type") is bool:
        kwargs["type"] = str2bool
        kwargs.setdefault("nargs", "?")
        kwargs.setdefault("const", True)
        kwargs.setdefault("metavar", "True|False")
    parser.add_argument(*flags, dest=name, **kwargs)


def add_threads(parser: argparse.ArgumentParser | Any) -> None:
    """--threads: the CPU threads of torch and the native kernels (``layerskip.kernels.threads``)."""
    add(parser, "threads", default=None,
        help="CPU threads for torch and the native kernels (default: $LAYERSKIP_THREADS, else the CPUs this process "
             "may run on; on a machine busy with other work, the cores left free)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --quantize, --compile, --threads and --seed, the same in every command
    that loads a model."""
    group = parser.add_argument_group("model")
    add(group, "model", default=None, help="checkpoint directory, .gguf file (llama), name fetched with `layerskip fetch` or Hugging Face hub id "
             "(default: the shipped model)")
    add(group, "device", default="auto", help="auto | cpu | cuda (auto: cuda when available, else cpu)")
    add(group, "dtype", default="auto", choices=["auto", *DTYPES],
        help="auto: bfloat16 where the hardware runs it well, else float32")
    add(group, "quantize", default="none", choices=QUANTIZATIONS,
        help="int8: weight-only int8 decoder projections (per-output-channel scales; LM head in --dtype)")
    add(group, "compile", type=bool, default=False,
        help="decode through torch.compile'd decoder layers (inductor, frozen weights; layerskip.kernels.compiled): "
             "faster steps after tens of seconds of compiling per layer range the first time")
    add_threads(group)
    add(group, "seed", type=int, default=42, help="random seed (sampling, sample selection)")


def add_output_dir(parser: argparse.ArgumentParser, default: str = "./logs", *aliases: str) -> None:
    """--output_dir: the directory results are written to (``aliases``: other spellings of it)."""
    add(parser, "output_dir", *aliases, default=default, help="directory the results are written to")


def add_progress(parser: argparse.ArgumentParser) -> None:
    add(parser, "no_progress", type=bool, default=False, help="no progress bar")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    add(group, "max_steps", type=int, default=512, help="maximum number of generated tokens")
    add(group, "generation_strategy", default="autoregressive", choices=NAMES,
        help="autoregressive: the full model (or early exit with --exit_layer); self_speculative: draft and verify")
    add(group, "exit_layer", type=int, default=None,
        help="draft exit layer (self_speculative, 1..L-1; default: the model's recommendation) "
        "or early-exit depth (autoregressive)")
    add(group, "num_speculations", type=int, default=None, help="draft tokens per verification (>= 1; default: the model's recommendation)")
    add(group, "sample", type=bool, default=True, help="sample (True) or greedy (False)")
    add(group, "temperature", type=float, default=0.6, help="sampling temperature")
    add(group, "top_k", type=int, default=0, help="0 disables top-k")
    add(group, "top_p", type=float, default=0.9, help="1.0 disables top-p")
    add(group, "no_repeat_ngram_size", type=int, default=None, help="never repeat an n-gram of this size (default: off)")
    add(group, "stop_words", nargs="*", default=None, help="stop when any of these strings is generated")
    add(group, "stop_token_ids", type=int, nargs="*", default=None, help="extra token ids that end generation")
    drafts = parser.add_argument_group("draft strategies (see layerskip.decoding.exit_criteria, layerskip.drafters.length)")
    add(drafts, "criteria", "dynamic_early_exit_mode", type=criteria_name, default=None,
        help="dynamic early exit: cosine_similarity, token_repeat, consistent_tokens (the fork's: patience 4), "
             "max_probability (logits_current), top2_margin, entropy_based, convergence, random, logits_future; "
             "--exit_layer is then the deepest exit (default: none, no dynamic exit); --dynamic_early_exit_mode is upstream's name")
    add(drafts, "criteria_threshold", type=float, default=None, help="the criterion's threshold (default: its documented one)")
    add(drafts, "criteria_patience", type=int, default=None, help="token_repeat: consecutive layers that must agree (default: 3; consistent_tokens: 4)")
    add(drafts, "criteria_temperature", type=float, default=None, help="entropy_based: softmax temperature (default: 1.0)")
    add(drafts, "criteria_high", type=float, default=None, help="logits_future: confidence that moves the exit down (default: 0.9)")
    add(drafts, "criteria_low", type=float, default=None, help="logits_future: confidence that moves the exit up (default: 0.5)")
    add(drafts, "skip_layers", default=None, help='layer-skip draft: \'{"attn": [..], "mlp": [..]}\' sublayers to skip')
    add(drafts, "layer_skip_proportion", type=float, default=None, help="layer-skip draft: skip each draft layer with this probability")
    add(drafts, "draft_length", default=None, choices=LENGTH_POLICIES,
        help="fixed k; threshold: stop below a confidence (Draft & Verify, adapted online); heuristic: k+2 / k-1")
    add(drafts, "confidence_threshold", type=float, default=None, help="draft_length threshold: initial gamma (default: 0.6)")
    add(drafts, "draft", default=None, choices=DRAFTS,
        help="who drafts: model (default: early exit, layer skip, ...); prompt_lookup: the tokens that followed the latest "
             "earlier occurrence of the last n tokens (no exit layer needed; --num_speculations default 10 when the model "
             "recommends none); prompt_lookup+model: the lookup when it matches, the model's draft otherwise")
    add(drafts, "prompt_lookup_max_ngram", type=int, default=None, help="prompt lookup: longest n-gram matched first (default: 3)")
    add(drafts, "prompt_lookup_min_ngram", type=int, default=None, help="prompt lookup: shortest n-gram tried (default: 1)")
    add(drafts, "prompt_lookup_num_tokens", type=int, default=None,
        help="prompt lookup: longest lookup draft (default: --num_speculations); with prompt_lookup+model the model "
             "still drafts --num_speculations")
    add(drafts, "prompt_lookup_factor", type=float, default=None,
        help="prompt lookup: draft at most factor x the match's length (how far the earlier occurrence agrees "
             "backwards; SuffixDecoding), e.g. 0.5 (default: always the full length)")
    add(drafts, "draft_control", default=None, choices=DRAFT_CONTROLS,
        help="payoff: per sequence, stop drafting while drafting rounds emit tokens more slowly than plain steps (measured), "
             "probing now and then to resume; the output is unchanged (default: none)")
    add(drafts, "draft_config", default=None, help="a draft configuration JSON (from layerskip tune); flags override it")
    add(drafts, "draft_adapter", default=None,
        help="a trained draft adapter directory (layerskip train-adapter): draft = layers 0..E-1 + adapter + shared head")
    add(drafts, "draft_vocab", type=int, default=None,
        help="draft over only the N most frequent tokens (FR-Spec; ranking from the adapter or checkpoint directory)")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    from layerskip.evaluation.datasets import DATASETS, SPEC_BENCH_CATEGORIES

    group = parser.add_argument_group("dataset")
    add(group, "dataset", default="human_eval", choices=DATASETS, help="the prompts and references")
    add(group, "data_path", default=None, help="local data: a JSONL file, a directory with test/train.jsonl, or a save_to_disk directory")
    add(group, "random_shuffle", type=bool, default=True, help="shuffle the samples (with --seed) before taking --num_samples")
    add(group, "num_samples", type=int, default=None, help="samples to run (none: all)")
    add(group, "n_shot", type=int, default=0, help="few-shot examples from the train split before each prompt")
    add(group, "template", default=None, help="format string with {message} wrapped around each prompt")
    add(group, "apply_chat_template", type=bool, default=False,
        help="send each prompt as one user turn of the tokenizer's chat template (spec_bench: always, where the "
             "tokenizer has one)")
    add(group, "categories", nargs="+", default=None,
        help=f"spec_bench: only these categories ({', '.join(SPEC_BENCH_CATEGORIES)}; default: all)")
    add(group, "prompt_field", default="prompt", help="custom_jsonl: the prompt field")
    add(group, "response_field", default="response", help="custom_jsonl: the reference field")
    add_progress(group)


def add_config_flags(parser: argparse.ArgumentParser, config: type, help: Mapping[str, str],
                     choices: Mapping[str, Sequence[str]], renamed: Mapping[str, str] | None = None) -> None:
    """One flag per field of the dataclass ``config`` (its defaults, ``int``/``float``/``bool``/``str``
    types), named like the field unless ``renamed`` maps it to a flag name; then ``--no_progress``."""
    defaults, renamed = config(), renamed or {}
    kinds = field_types(config)
    for f in fields(config):
        kind = kinds[f.name].base if kinds[f.name].base in (int, float, bool) else str
        add(parser, renamed.get(f.name, f.name), type=kind, default=getattr(defaults, f.name), choices=choices.get(f.name),
            help=help.get(f.name, f.name.replace("_", " ")))
    add_progress(parser)


def config_values(args: argparse.Namespace, config: type, renamed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The dataclass fields of ``config`` read back from flags registered by ``add_config_flags``."""
    renamed = renamed or {}
    return {f.name: getattr(args, renamed.get(f.name, f.name)) for f in fields(config)}


def add_batch_size(parser: argparse.ArgumentParser) -> None:
    """``--batch_size``: samples decoded together by the batched engine."""
    add(parser, "batch_size", type=int, default=1,
        help="samples decoded together, one row each (the batched engine; rows join as others finish); "
             "1: one at a time")


def harness_command(subparsers: argparse._SubParsersAction, name: str, summary: str, description: str,
                    example: str) -> argparse.ArgumentParser:
    """A command that decodes a dataset (benchmark, correctness, sweep, tune): its parser with the
    model, generation, dataset and ``--output_dir`` flags."""
    parser = subcommand(subparsers, name, summary, description, example)
    add_model_arguments(parser)
    add_generation_arguments(parser)
    add_dataset_arguments(parser)
    add_output_dir(parser)
    return parser
