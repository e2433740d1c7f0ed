"""The FastAPI app: OpenAI's ``/v1/completions``, ``/v1/chat/completions`` and ``/v1/models``, plus
``/health`` and ``/metrics``, in front of one ``EngineLoop``.

A request is checked before it is queued (API key, body size, JSON, types, unsupported parameters, the
model's name, the context) and every refusal is OpenAI's error object; a queued request streams its
tokens as Server-Sent Events or returns them at once, and a client that goes away has its request
aborted at the next round.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, TypeVar

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from layerskip.api.params import SamplingParams
from layerskip.decoding.chat import encode_chat
from layerskip.decoding.engine import Engine
from layerskip.decoding.settings import GenerationConfig
from layerskip.errors import LayerskipError
from layerskip.serve.engine_loop import Closed, EngineLoop, Failed, Finished, Full, Submission
from layerskip.serve.metrics import Metrics
from layerskip.serve.protocol import APIError, ChatRequest, CompletionRequest, parse_body
from layerskip.serve.text import TextStream, final_text

RequestBody = TypeVar("RequestBody", CompletionRequest, ChatRequest)

log = logging.getLogger("layerskip.serve")

#: below this a temperature overflows logits / T (as the command line refuses it)
MIN_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class ServeSettings:
    """How the server answers. The sampling defaults apply to the parameters a request leaves out;
    ``stop`` / ``stop_token_ids`` always apply, on top of a request's own."""

    model_name: str
    max_model_len: int
    max_num_seqs: int = 8
    max_queue_size: int = 64
    api_key: str | None = None
    max_request_bytes: int = 1 << 20
    default_max_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    no_repeat_ngram_size: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0
    retry_after_s: int = 1


@dataclass
class Backend:
    """What decodes: the tokenizer, its model's stop tokens and vocabulary size, and how to build an engine."""

    tokenizer: Any
    eos_token_ids: tuple[int, ...]
    vocab_size: int
    make_engine: Callable[[], Engine]


def create_app(settings: ServeSettings, backend: Backend) -> FastAPI:
    metrics = Metrics(settings.model_name)
    seeds = random.Random(settings.seed)  # requests without a seed each draw one (reproducible per server run)
    created = int(time.time())
    tokenizer = backend.tokenizer
    api_key = settings.api_key.encode() if settings.api_key else None

    # the tokenizer is used from the event loop and (for stop strings) the engine thread: one at a time
    tokenizer_lock = threading.Lock()

    def decode(ids: list[int]) -> str:
        with tokenizer_lock:
            return tokenizer.decode(ids, skip_special_tokens=True)

    def encode(text: str) -> list[int]:
        with tokenizer_lock:
            return tokenizer(text)["input_ids"]

    def encode_messages(messages: list[dict[str, str]]) -> list[int]:
        with tokenizer_lock:
            return encode_chat(tokenizer, messages)

    engine_loop = EngineLoop(backend.make_engine, metrics, settings.max_num_seqs + settings.max_queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not engine_loop.alive:  # not run by ``layerskip.serve.server.serve``: a thread of its own
            await asyncio.to_thread(engine_loop.start)  # builds the engine (allocates its cache)
        try:
            yield
        finally:
            await asyncio.to_thread(engine_loop.close)

    app = FastAPI(title="layerskip", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.metrics, app.state.engine_loop = settings, metrics, engine_loop

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        if not error.counted:
            metrics.outcome("rejected" if error.status in (429, 503) else "invalid" if error.status < 500 else "error")
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return APIError(error.status_code, str(error.detail), code=None).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.error("internal error on %s: %s: %s", request.url.path, type(error).__name__, error)
        return APIError(500, "internal server error").response()

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), api_key)):
            raise APIError(401, "invalid or missing API key (Authorization: Bearer KEY)", None, "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
        limit = settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the request body ({declared} bytes) is over the limit of {limit} bytes", None,
                           "request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"the request body is over the limit of {limit} bytes", None, "request_too_large")
        return bytes(body)

    def check_model(name: str | None) -> None:
        if name is not None and name != settings.model_name:
            raise APIError(404, f"the model `{name}` does not exist (this server serves `{settings.model_name}`)",
                           "model", "model_not_found")

    def config_for(body: CompletionRequest | ChatRequest, prompt_len: int, max_tokens: int | None,
                   tokens_param: str, prompt_param: str) -> GenerationConfig:
        limit = settings.max_model_len
        if prompt_len >= limit:
            raise APIError(400, f"the prompt is {prompt_len} tokens; this server's context (max_model_len) is {limit} "
                           "tokens, prompt and completion together", prompt_param, "context_length_exceeded")
        room = limit - prompt_len
        if max_tokens is None:
            max_tokens = min(settings.default_max_tokens, room)
        elif isinstance(max_tokens, int) and max_tokens > room:
            raise APIError(400, f"`{tokens_param}` {max_tokens} + the prompt's {prompt_len} tokens exceed this server's "
                           f"context of {limit} tokens: at most {room} fit", tokens_param, "context_length_exceeded")
        temperature = settings.temperature if body.temperature is None else body.temperature
        if 0 < temperature < MIN_TEMPERATURE:
            raise APIError(400, f"`temperature` {temperature} is too small (0 for greedy, else >= {MIN_TEMPERATURE})",
                           "temperature", "invalid_value")
        if body.seed is not None and not 0 <= body.seed < 2 ** 63:
            raise APIError(400, f"`seed` must be an integer in 0..2**63-1, got {body.seed}", "seed", "invalid_value")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        try:
            params = SamplingParams(
                temperature=temperature, top_p=settings.top_p if body.top_p is None else body.top_p,
                top_k=settings.top_k if body.top_k is None else body.top_k, max_tokens=max_tokens,
                stop=[*stops, *settings.stop], stop_token_ids=list(settings.stop_token_ids),
                ignore_eos=body.ignore_eos, seed=seeds.randrange(2 ** 31) if body.seed is None else body.seed)
            config = params.generation_config(backend.eos_token_ids, backend.vocab_size)
        except LayerskipError as error:
            message = str(error).replace("`max_tokens`", f"`{tokens_param}`")
            named = re.search(r"`([A-Za-z_]+)`", message)
            raise APIError(400, message, named.group(1) if named else None, "invalid_value") from None
        if settings.no_repeat_ngram_size:
            config = replace(config, sampling=replace(config.sampling,
                                                      no_repeat_ngram_size=settings.no_repeat_ngram_size))
        return config

    async def submit(request: Request, prompt_ids: list[int], config: GenerationConfig) -> Submission:
        engine_loop: EngineLoop = request.app.state.engine_loop
        submission = Submission(prompt_ids, config, decode if config.stop_words else None, asyncio.get_running_loop())
        try:
            engine_loop.submit(submission)
        except Full:
            raise APIError(429, f"the server's queue is full ({engine_loop.capacity} requests queued or running); "
                           "retry later", None, "queue_full",
                           headers={"Retry-After": str(settings.retry_after_s)}) from None
        except Closed:
            raise APIError(503, "the server is shutting down", None, "shutting_down") from None
        return submission

    async def next_event(request: Request, submission: Submission) -> Any:
        """The submission's next event; aborts it (and returns None) when the client has gone away.
        (A streaming response needs no polling: Starlette cancels it when the client disconnects.)"""
        while True:
            try:
                return await asyncio.wait_for(submission.events.get(), 0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    request.app.state.engine_loop.abort(submission)
                    return None

    async def complete(request: Request, submission: Submission) -> tuple[list[int], Any] | None:
        """All of a request's tokens and its result (None when the client left)."""
        tokens: list[int] = []
        try:
            while True:
                event = await next_event(request, submission)
                if event is None:
                    return None
                if isinstance(event, Failed):  # counted by the engine loop
                    raise APIError(event.status, event.message, None, "engine_error" if event.status >= 500 else None,
                                   counted=True)
                tokens += event.token_ids
                if isinstance(event, Finished):
                    return tokens, event.result
        finally:
            if not submission.done:
                request.app.state.engine_loop.abort(submission)

    def usage(prompt_len: int, completion_len: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_len, "completion_tokens": completion_len,
                "total_tokens": prompt_len + completion_len}

    def finish_reason(result: Any) -> str:
        return "length" if result.stats.stop_reason == "max_steps" else "stop"

    def sse(data: Any) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def stream(request: Request, submission: Submission, prompt_len: int, include_usage: bool,
               chunk: Callable[[str | None, str | None, bool], dict[str, Any] | None]) -> StreamingResponse:
        """``chunk(text, finish_reason, first)``: one SSE chunk's body (the first one: None for none)."""
        text = TextStream(decode, submission.config.stop_words)

        async def events() -> AsyncIterator[str]:
            tokens: list[int] = []
            try:
                opening = chunk(None, None, True)
                if opening is not None:
                    yield sse(opening)
                while True:
                    event = await submission.events.get()
                    if isinstance(event, Failed):
                        yield sse(APIError(event.status, event.message).body())
                        break
                    tokens += event.token_ids
                    piece = text.push(event.token_ids)
                    if isinstance(event, Finished):
                        piece += text.finish(event.result.token_ids, event.result.stats.stop_reason)
                        if piece:
                            yield sse(chunk(piece, None, False))
                        yield sse(chunk(None, finish_reason(event.result), False))
                        if include_usage:
                            last = chunk(None, None, False)
                            assert last is not None
                            last["choices"], last["usage"] = [], usage(prompt_len, len(event.result.token_ids))
                            yield sse(last)
                        break
                    if piece:
                        yield sse(chunk(piece, None, False))
                yield "data: [DONE]\n\n"
            finally:  # the client left (the response was cancelled) or the stream ended
                if not submission.done:
                    request.app.state.engine_loop.abort(submission)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def respond(request: Request, submission: Submission, streamed: bool, prompt_len: int, include_usage: bool,
                      chunk: Callable[[str | None, str | None, bool], dict[str, Any] | None], config: GenerationConfig,
                      ident: str, now: int, kind: str, choice: Callable[[str], dict[str, Any]]) -> Response:
        """The answer to a submitted request: its SSE stream, or once finished one JSON object of ``kind``
        whose choice holds ``choice(text)`` (499 when the client left first)."""
        if streamed:
            return stream(request, submission, prompt_len, include_usage, chunk)
        done = await complete(request, submission)
        if done is None:
            return Response(status_code=499)
        _, result = done
        text = final_text(decode(result.token_ids), result.stats.stop_reason, config.stop_words)
        return JSONResponse({"id": ident, "object": kind, "created": now, "model": settings.model_name,
                             "choices": [{"index": 0, **choice(text), "logprobs": None,
                                          "finish_reason": finish_reason(result)}],
                             "usage": usage(prompt_len, len(result.token_ids))})

    async def accepted(request: Request, kind: type[RequestBody]) -> RequestBody:
        """The request's body as ``kind``, once the key, the JSON, every parameter and the model name are
        accepted (each refusal an ``APIError``)."""
        check_key(request)
        body = parse_body(await read_body(request), kind)
        body.refuse_unsupported()
        check_model(body.model)
        return body

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body: CompletionRequest = await accepted(request, CompletionRequest)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "one prompt per request (`prompt` lists several)", "prompt", "unsupported_parameter")
            prompt = prompt[0]
        if isinstance(prompt, str):
            prompt_ids = encode(prompt)
        else:
            prompt_ids = list(prompt)
            bad = [t for t in prompt_ids if not 0 <= t < backend.vocab_size]
            if bad:
                raise APIError(400, f"token id {bad[0]} in `prompt` is outside the vocabulary 0..{backend.vocab_size - 1}",
                               "prompt", "invalid_value")
        if not prompt_ids:
            raise APIError(400, "the prompt is empty (no tokens)", "prompt", "invalid_value")
        config = config_for(body, len(prompt_ids), body.max_tokens, "max_tokens", "prompt")
        submission = await submit(request, prompt_ids, config)
        ident, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(piece: str | None, reason: str | None, first: bool) -> dict[str, Any] | None:
            if first:
                return None  # a completion's stream starts with its first text
            out = {"id": ident, "object": "text_completion", "created": now, "model": settings.model_name,
                   "choices": [{"index": 0, "text": piece or "", "logprobs": None, "finish_reason": reason}]}
            if include_usage:
                out["usage"] = None
            return out

        return await respond(request, submission, body.stream, len(prompt_ids), include_usage, chunk, config,
                             ident, now, "text_completion", lambda text: {"text": text})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body: ChatRequest = await accepted(request, ChatRequest)
        if not body.messages:
            raise APIError(400, "`messages` is empty", "messages", "invalid_value")
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise APIError(400, "give `max_completion_tokens` or `max_tokens`, not both", "max_tokens", "invalid_value")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(400, f"the model `{settings.model_name}` has no chat template: use /v1/completions",
                           "messages", "no_chat_template")
        try:
            prompt_ids = encode_messages(messages)
        except LayerskipError as error:
            raise APIError(400, str(error), "messages", "invalid_value") from None
        except Exception as error:  # noqa: BLE001 - a template that raises on these messages (jinja's raise_exception)
            raise APIError(400, f"the chat template refused these messages: {error}", "messages",
                           "invalid_value") from None
        if not prompt_ids:
            raise APIError(400, "the messages encode to no tokens", "messages", "invalid_value")
        tokens_param = "max_tokens" if body.max_tokens is not None else "max_completion_tokens"
        max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
        config = config_for(body, len(prompt_ids), max_tokens, tokens_param, "messages")
        submission = await submit(request, prompt_ids, config)
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(piece: str | None, reason: str | None, first: bool) -> dict[str, Any]:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else \
                ({"content": piece} if piece else {})
            out = {"id": ident, "object": "chat.completion.chunk", "created": now, "model": settings.model_name,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}
            if include_usage:
                out["usage"] = None
            return out

        return await respond(request, submission, body.stream, len(prompt_ids), include_usage, chunk, config,
                             ident, now, "chat.completion", lambda text: {"message": {"role": "assistant", "content": text}})

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        check_key(request)
        return JSONResponse({"object": "list", "data": [
            {"id": settings.model_name, "object": "model", "created": created, "owned_by": "layerskip",
             "max_model_len": settings.max_model_len}]})

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        engine_loop: EngineLoop = request.app.state.engine_loop
        if not engine_loop.alive:
            return APIError(503, "the engine is not running").response()
        return JSONResponse({"status": "ok", "running": engine_loop.engine.running if engine_loop.engine else 0,
                             "queued_or_running": engine_loop.active})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    return app
