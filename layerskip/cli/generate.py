"""``layerskip generate``: one-shot (``--prompt``) or interactive generation, optionally as a chat."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Iterator, TextIO

from layerskip.decoding.chat import Conversation, require_chat_template, single_turn
from layerskip.cli.arguments import add, add_generation_arguments, add_model_arguments, subcommand
from layerskip.cli.settings import generation_config, strategy
from layerskip.cli.streaming import TextStreamer
from layerskip.errors import LayerskipError
from layerskip.decoding.loop import generate
from layerskip.checkpoints.loading import load


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subcommand(
        subparsers, "generate", "generate text (one-shot or interactive)",
        "Generate text for --prompt, or interactively (one prompt per line, Ctrl-D quits), autoregressively or "
        "self-speculatively; greedy self-speculative output equals autoregressive output token for token.",
        "layerskip generate --generation_strategy self_speculative --exit_layer 2 --num_speculations 4 "
        "--sample False --prompt 'def fib(n):'")
    add_model_arguments(parser)
    add_generation_arguments(parser)
    add(parser, "prompt", default=None, help="generate once for this prompt (default: interactive mode)")
    add(parser, "chat", type=bool, default=False,
        help="interactive chat: each line is a user turn, the model's replies stay in the conversation")
    add(parser, "system", default=None, help="a system message for --chat / --apply_chat_template")
    add(parser, "apply_chat_template", type=bool, default=False,
        help="wrap each prompt as one user turn with the tokenizer's chat template")
    add(parser, "streamer", default="standard", choices=["none", "standard", "speculative"],
        help="print tokens as they come; speculative colours accepted drafts green, the full model's tokens yellow")
    add(parser, "json", type=bool, default=False, help="print one JSON object with text, token ids and stats")
    parser.set_defaults(handler=run)


def read_line(stream: TextIO) -> str:
    """One line of ``stream``, decoded strictly as UTF-8 whatever the stream's error handler (a
    POSIX-locale stdin turns bad bytes into surrogates instead of failing)."""
    raw = stream.buffer.readline() if hasattr(stream, "buffer") else stream.readline()
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LayerskipError(f"standard input is not valid UTF-8 ({exc.reason} at byte {exc.start} of the line)") from None


def interactive_prompts() -> Iterator[str]:
    """Prompts typed at the terminal, one per line; a trailing backslash continues a line."""
    if sys.stdin.isatty():
        sys.stderr.write("Enter a prompt (a line ending in \\ continues it; Ctrl-D or 'exit' quits).\n")
    lines: list[str] = []
    while True:
        if sys.stdin.isatty():
            sys.stderr.write("... " if lines else ">>> ")
            sys.stderr.flush()
        line = read_line(sys.stdin)
        if not line:
            return
        line = line.rstrip("\n")
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        prompt = "\n".join([*lines, line])
        lines = []
        if prompt.strip() in ("exit", "quit"):
            return
        if prompt.strip():
            yield prompt


def run(args: argparse.Namespace) -> int:
    if args.prompt is not None and not args.prompt.strip():
        raise LayerskipError("empty prompt")
    if args.chat and args.prompt is not None:
        raise LayerskipError("--chat is interactive; for one --prompt use --apply_chat_template True")
    if args.system is not None and not (args.chat or args.apply_chat_template):
        raise LayerskipError("--system needs --chat or --apply_chat_template True")
    loaded = load(args.model, args.device, args.dtype, args.quantize, compile=args.compile)
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.apply_chat_template:
        require_chat_template(tokenizer)  # before an interactive session starts, not at its first prompt
    conversation = Conversation(tokenizer, args.system) if args.chat else None
    decoding = strategy(args, loaded.recommended).decoding(model.num_layers, args.seed)
    config = generation_config(args, loaded)

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    prompts = [args.prompt] if args.prompt is not None else interactive_prompts()
    for prompt in prompts:
        if conversation is not None:
            prompt_ids = conversation.ask(prompt)
        elif args.apply_chat_template:
            prompt_ids = single_turn(tokenizer, prompt, args.system)
        else:
            prompt_ids = tokenizer(prompt)["input_ids"]
        if not prompt_ids:
            raise LayerskipError("the prompt encodes to no tokens")
        streamer = None
        if not args.json and args.streamer != "none":
            streamer = TextStreamer(decode, sys.stdout, colour=args.streamer == "speculative")
        result = generate(model, prompt_ids, config, decoding, streamer, decode)
        if conversation is not None:
            conversation.answer(decode(result.token_ids))
        if args.json:
            out = {
                "model": str(loaded.path),
                "prompt": prompt,
                "text": decode(result.token_ids),
                "token_ids": result.token_ids,
                "stats": result.stats.as_dict(),
            }
            sys.stdout.write(json.dumps(out) + "\n")
        else:
            if streamer is not None:
                streamer.end()
            else:
                sys.stdout.write(decode(result.token_ids) + "\n")
            s = result.stats
            acc = "n/a" if s.acceptance_rate is None else f"{s.acceptance_rate:.3f}"
            sys.stderr.write(
                f"[{s.generated_tokens} tokens, {s.tokens_per_second:.1f} tok/s, acceptance {acc}, "
                f"ttft {s.time_to_first_token * 1000:.1f} ms, stop: {s.stop_reason}]\n"
            )
        sys.stdout.flush()
    return 0
