"""``layerskip self-generate``: a corpus of the model's own greedy continuations (JSONL), the data
for sequence-level self-distillation of its early exits (``layerskip.training.self_generated``)."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from layerskip.cli.arguments import add, add_model_arguments, add_progress, subcommand
from layerskip.evaluation.fingerprint import digest, model_identity
from layerskip.decoding.limits import check_fits
from layerskip.training.self_generated import (
    check_sizes,
    claim_output,
    prompt_prefixes,
    training_prefixes,
    write_self_generated_corpus,
)
from layerskip.errors import LayerskipError
from layerskip.validation import writable_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subcommand(
        subparsers, "self-generate", "continue corpus prefixes greedily with the model, for self-distillation",
        "Continue prefixes of a corpus greedily with the model (batched) and write them as JSONL: the text for "
        "sequence-level self-distillation of its early exits (layerskip train --distill). An interrupted run "
        "with the same settings continues.",
        "layerskip self-generate --model runs/my-model/final --corpus stdlib --output runs/greedy.jsonl --num_sequences 8000")
    add_model_arguments(parser)
    add(parser, "corpus", default="stdlib", help="where prefixes come from (its training split): 'stdlib', a directory, a glob or a .jsonl file")
    add(parser, "text_field", default="text", help="the text field of JSONL records (read and written)")
    add(parser, "output", required=True,
        help="JSONL file to write; a file from an interrupted run with the same settings is continued, any other is refused")
    add(parser, "prompts", default=None,
        help="a JSONL file of whole prompts (its --text_field) to continue instead of corpus prefixes, e.g. function headers")
    add(parser, "apply_chat_template", type=bool, default=False,
        help="with --prompts: each text is a user turn, rendered by the model's chat template, so the continuation "
             "is the model's answer (the text for a chat model's draft)")
    add(parser, "num_sequences", type=int, default=8000, help="sequences to write (with --prompts: at most its records)")
    add(parser, "prefix_tokens", type=int, default=128, help="tokens of each corpus prefix")
    add(parser, "new_tokens", type=int, default=128, help="greedy tokens generated after each prefix")
    add(parser, "batch_size", type=int, default=64, help="prefixes continued together")
    add(parser, "stop_at_eos", type=bool, default=False,
        help="end each continuation at the model's first stop token (kept), as generation with EOS stopping does")
    add_progress(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from layerskip.checkpoints.loading import load

    check_sizes(num_sequences=args.num_sequences, prefix_tokens=args.prefix_tokens, new_tokens=args.new_tokens,
                batch_size=args.batch_size)
    if args.apply_chat_template and args.prompts is None:
        raise LayerskipError("--apply_chat_template True needs --prompts (a corpus prefix is not a user turn)")
    output = writable_file(args.output, "--output")
    loaded = load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize, compile=args.compile)
    if args.prompts is not None:
        prefixes = prompt_prefixes(loaded.tokenizer, args.prompts, args.num_sequences, args.text_field,
                                   chat=args.apply_chat_template)
        longest = max(len(p) for p in prefixes)
    else:
        prefixes = training_prefixes(loaded.tokenizer, args.corpus, args.num_sequences, args.prefix_tokens, args.seed,
                                     args.text_field)
        longest = args.prefix_tokens
    check_fits(loaded.model, longest, args.new_tokens, batch_size=args.batch_size, steps_name="`new_tokens`")
    rows = prefixes.tolist() if not isinstance(prefixes, list) else prefixes
    fingerprint = {"model": model_identity(loaded.path), "prefixes": digest(rows),
                   "new_tokens": args.new_tokens, "batch_size": args.batch_size, "text_field": args.text_field,
                   **({"stop_at_eos": True} if args.stop_at_eos else {}),
                   **({"chat_template": True} if args.apply_chat_template else {}),
                   "dtype": str(loaded.model.dtype).removeprefix("torch."), "device": loaded.model.device.type}
    stop_ids = frozenset(loaded.model.config.eos_token_ids) if args.stop_at_eos else frozenset()
    done = min(claim_output(output, fingerprint), len(rows))
    with tqdm(total=len(rows), initial=done, unit="seq", disable=args.no_progress) as bar:
        total = write_self_generated_corpus(loaded.model, loaded.tokenizer, rows, output, args.new_tokens,
                                            args.batch_size, args.text_field, on_batch=bar.update,
                                            stop_token_ids=stop_ids)
    print(f"{output}: {total} sequences")
    return 0
