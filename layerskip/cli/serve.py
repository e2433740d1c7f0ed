"""``layerskip serve``: an OpenAI-compatible server (``layerskip.serve``) on uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from layerskip.checkpoints.loading import load
from layerskip.cli.arguments import add, add_generation_arguments, add_model_arguments, subcommand
from layerskip.cli.settings import strategy
from layerskip.decoding.engine import Engine
from layerskip.decoding.limits import check_fits
from layerskip.errors import LayerskipError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subcommand(
        subparsers, "serve", "serve the model over an OpenAI-compatible HTTP API",
        "Serve /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics (OpenAI's API, streaming as "
        "Server-Sent Events) on the batched engine: up to --max_num_seqs requests decode together, joining and "
        "leaving between rounds, autoregressively or self-speculatively. The generation flags are the defaults of "
        "the parameters a request leaves out (--max_steps: max_tokens; --sample False: temperature 0); "
        "--stop_words and --stop_token_ids apply to every request.",
        "layerskip serve --generation_strategy self_speculative --port 8000 --api_key $KEY")
    add_model_arguments(parser)
    add_generation_arguments(parser)
    group = parser.add_argument_group("server")
    add(group, "host", default="127.0.0.1", help="address to listen on (loopback; another address must be given explicitly)")
    add(group, "port", type=int, default=8000, help="port to listen on (0: any free port, printed at start)")
    add(group, "max_num_seqs", type=int, default=8, help="requests decoded together (rows of the batch)")
    add(group, "max_queue_size", type=int, default=64,
        help="requests that may wait for a row; more are refused with 429 and Retry-After")
    add(group, "max_model_len", type=int, default=2048,
        help="positions per request, prompt and completion together (at most the model's context)")
    add(group, "prefill_chunk", type=int, default=512,
        help="most prompt tokens prefilled per round, so a long prompt does not stall the running requests")
    add(group, "api_key", default=None,
        help="require 'Authorization: Bearer KEY' on /v1 (default: $LAYERSKIP_API_KEY, else no key)")
    add(group, "served_model_name", default=None, help="the model's name in the API (default: the checkpoint's name)")
    add(group, "max_request_bytes", type=int, default=1 << 20, help="largest request body accepted (413 above)")
    add(group, "shutdown_timeout", type=float, default=30.0,
        help="on SIGTERM/SIGINT: seconds running requests may take to finish before they are cancelled")
    add(group, "log_level", default="info", choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (info: one line per request)")
    parser.set_defaults(handler=run)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket (bind errors as one line; port 0 picks a free one)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise LayerskipError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def _model_name(model: str | None, path: Path) -> str:
    """The name the API knows the model by: the --model value when it names a registered model or a hub id,
    else the directory's (or .gguf file's) own name, never the local path."""
    if model and not Path(model).expanduser().exists():
        return model
    return path.stem if path.suffix == ".gguf" else path.name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from layerskip.serve import Backend, ServeSettings, create_app
    from layerskip.serve.server import serve

    for name, low in (("port", 0), ("max_num_seqs", 1), ("max_queue_size", 0), ("max_model_len", 2),
                      ("prefill_chunk", 1), ("max_request_bytes", 1)):
        if getattr(args, name) < low:
            raise LayerskipError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.port > 65535:
        raise LayerskipError(f"--port must be <= 65535, got {args.port}")
    if not args.shutdown_timeout >= 0:
        raise LayerskipError(f"--shutdown_timeout must be >= 0, got {args.shutdown_timeout}")
    if not args.temperature >= 0:
        raise LayerskipError(f"--temperature must be >= 0, got {args.temperature}")
    api_key = args.api_key if args.api_key is not None else os.environ.get("LAYERSKIP_API_KEY") or None
    if args.api_key is not None and not args.api_key.strip():
        raise LayerskipError("--api_key is empty")
    loaded = load(args.model, args.device, args.dtype, args.quantize, compile=args.compile)
    model, tokenizer = loaded.model, loaded.tokenizer
    limit = model.config.context_limit
    if args.max_model_len > limit:
        raise LayerskipError(f"--max_model_len {args.max_model_len} exceeds the model's context of {limit} positions")
    chosen = strategy(args, loaded.recommended)
    decoding = chosen.decoding(model.num_layers, args.seed)  # validates the strategy once, before serving
    max_draft = decoding.drafter.max_tokens if decoding.drafter else 0
    check_fits(model, 0, args.max_model_len, max_draft + 1, batch_size=args.max_num_seqs, steps_name="`max_model_len`")

    def build() -> Engine:
        engine = Engine(model, chosen.decoding(model.num_layers, args.seed), max_rows=args.max_num_seqs,
                        max_length=args.max_model_len, prefill_chunk=args.prefill_chunk)
        engine.cache  # allocated now, not at the first request
        return engine

    first = [build()]  # here, so that what fails to build is this command's one-line error

    def make_engine() -> Engine:  # the server's engine, and a fresh one after a step failed
        return first.pop() if first else build()

    name = args.served_model_name or _model_name(args.model, loaded.path)
    settings = ServeSettings(
        model_name=name, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        max_queue_size=args.max_queue_size, api_key=api_key, max_request_bytes=args.max_request_bytes,
        default_max_tokens=args.max_steps, temperature=args.temperature if args.sample else 0.0, top_p=args.top_p,
        top_k=args.top_k, no_repeat_ngram_size=args.no_repeat_ngram_size or 0,
        stop=tuple(w for w in args.stop_words or [] if w), stop_token_ids=tuple(args.stop_token_ids or []),
        seed=args.seed)
    vocab = model.config.vocab_size
    outside = [i for i in settings.stop_token_ids if i >= vocab]
    if outside:
        raise LayerskipError(f"--stop_token_ids {outside[0]} is outside the vocabulary 0..{vocab - 1}")
    app = create_app(settings, Backend(tokenizer, loaded.eos_token_ids, vocab, make_engine))
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if not _is_loopback(args.host) and api_key is None:
        sys.stderr.write(f"layerskip serve: warning: listening on {args.host} without --api_key: anyone who can reach "
                         "it may use it\n")
    sys.stderr.write(f"layerskip serve: {name} ({chosen.label}) on http://{shown}:{port}/v1 "
                     f"(max_num_seqs {args.max_num_seqs}, max_model_len {args.max_model_len})\n")
    sys.stderr.flush()
    logging.getLogger("layerskip.serve").setLevel(args.log_level.upper())
    try:
        started = serve(app, sock, args.shutdown_timeout, args.log_level)
    finally:
        sock.close()
    if not started:
        raise LayerskipError("the server did not start (see the log above)")
    return 0
