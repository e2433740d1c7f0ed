"""The engine's one thread: ``layerskip.decoding.engine.Engine`` is not thread-safe, so one thread owns
it. It takes new requests and aborts from a thread-safe queue, steps the engine while there is work
(continuous batching: requests join and leave between rounds), and hands each request's outputs to its
asyncio queue on the server's event loop (``loop.call_soon_threadsafe``). The HTTP handlers talk to the
engine only through ``submit`` and ``abort``.

``layerskip serve`` runs the loop on the process's main thread (``run``) and the HTTP server on another
(``layerskip.serve.server``): the model was loaded there, so its OpenMP thread team is the one that
decodes. A second thread decoding would start a second team, and with more OpenMP threads than cores
libgomp stops spinning between parallel regions (measured on 2 cores: 12 ms per token on the loading
thread, 19 ms on another). ``start`` runs it on a thread of its own instead (embedding, tests).

Admission is bounded: at most ``capacity`` requests are queued or running at once (``submit`` refuses
more). A step that fails fails the requests it was decoding (not the process) and the engine is rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from layerskip.decoding.engine import Engine
from layerskip.decoding.results import GenerationResult
from layerskip.decoding.settings import GenerationConfig
from layerskip.errors import LayerskipError
from layerskip.serve.metrics import Metrics

log = logging.getLogger("layerskip.serve")


@dataclass(frozen=True)
class Tokens:
    token_ids: list[int]


@dataclass(frozen=True)
class Finished:
    token_ids: list[int]
    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    status: int
    message: str


Event = Tokens | Finished | Failed


@dataclass
class Submission:
    """One request on its way through the engine; its events arrive on ``events`` in the event loop."""

    prompt_ids: list[int]
    config: GenerationConfig
    decode: Callable[[list[int]], str] | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.perf_counter)
    engine_id: int | None = None
    last_output: float | None = None
    done: bool = False

    def emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


class Full(Exception):
    """The queue holds ``capacity`` requests."""


class Closed(Exception):
    """The loop is stopping or stopped."""


class EngineLoop:
    def __init__(self, make_engine: Callable[[], Engine], metrics: Metrics, capacity: int) -> None:
        self.make_engine, self.metrics, self.capacity = make_engine, metrics, capacity
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._active = 0
        self._closed = False
        self._serving = False
        self._thread: threading.Thread | None = None
        self.engine: Engine | None = None

    # the event loop's side ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Build the engine (allocating its cache) and take requests; ``run`` will step them."""
        if self.engine is None:
            self.engine = self.make_engine()
        self._serving = True

    def run(self) -> None:
        """Step the engine in the calling thread until ``close`` (or the loop fails)."""
        self.prepare()
        self._run()

    def start(self) -> None:
        """Build the engine here and step it on a thread of its own."""
        self.prepare()
        self._thread = threading.Thread(target=self._run, name="layerskip-engine", daemon=True)
        self._thread.start()

    def call(self, function: Callable[[], None]) -> None:
        """Run ``function`` on the engine's thread between rounds (safe from a signal handler: the
        command queue's ``put`` is reentrant)."""
        self._commands.put(("call", function))

    @property
    def alive(self) -> bool:
        return self._serving and not self._closed

    @property
    def active(self) -> int:
        """Requests queued or running."""
        return self._active

    def submit(self, submission: Submission) -> None:
        """Queue a request (``Full`` when ``capacity`` are queued or running, ``Closed`` when stopping)."""
        with self._lock:
            if self._closed or not self._serving:
                raise Closed()
            if self._active >= self.capacity:
                raise Full()
            self._active += 1
        self._commands.put(("add", submission))

    def abort(self, submission: Submission) -> None:
        """Drop a request at the next round (nothing if it has finished)."""
        if not submission.done:
            self._commands.put(("abort", submission))

    def drain(self) -> None:
        """Refuse new requests (``Closed``); the queued and running ones go on."""
        with self._lock:
            self._closed = True

    def cancel_all(self) -> None:
        """End every queued and running request at the next round (503: shutting down)."""
        self._commands.put(("cancel", None))

    def close(self, timeout: float = 10.0) -> None:
        """Stop: the requests still queued or running fail (503), the thread ends."""
        with self._lock:
            self._closed = True
        self._commands.put(("stop", None))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # the engine thread's side ------------------------------------------------------------------------

    def _release(self, submission: Submission) -> None:
        submission.done = True
        with self._lock:
            self._active -= 1

    def _run(self) -> None:
        by_id: dict[int, Submission] = {}
        try:
            self._loop(by_id)
            self._serving = False
        except BaseException as error:  # the thread itself failed (e.g. no engine could be rebuilt): fail them all
            log.error("the engine thread stopped: %s: %s", type(error).__name__, error)
            with self._lock:
                self._closed = True
            self._serving = False
            for submission in by_id.values():
                self._release(submission)
                submission.emit(Failed(500, "the engine stopped"))
            while True:
                try:
                    command, submission = self._commands.get_nowait()
                except queue.Empty:
                    break
                if command == "add":
                    self._release(submission)
                    submission.emit(Failed(500, "the engine stopped"))

    def _loop(self, by_id: dict[int, Submission]) -> None:
        engine = self.engine
        assert engine is not None
        while True:
            stopping = False
            # wait for work when idle; otherwise take whatever came in since the last round
            block = not engine.unfinished
            while True:
                try:
                    command, submission = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
                except queue.Empty:
                    break
                block = False
                if command == "stop":
                    stopping = True
                elif command == "call":
                    submission()
                elif command == "cancel":
                    for submission in by_id.values():
                        engine.abort(submission.engine_id)  # type: ignore[arg-type]
                        self._release(submission)
                        self.metrics.outcome("aborted")
                        submission.emit(Failed(503, "the server is shutting down"))
                    by_id.clear()
                elif command == "add":
                    self._add(engine, submission, by_id)
                elif command == "abort" and not submission.done and submission.engine_id is not None:
                    engine.abort(submission.engine_id)
                    by_id.pop(submission.engine_id, None)
                    self.metrics.outcome("aborted")
                    self._release(submission)
            if stopping:
                for submission in by_id.values():
                    self._release(submission)
                    self.metrics.outcome("aborted")
                    submission.emit(Failed(503, "the server is shutting down"))
                self.metrics.rows(0, 0)
                return
            if engine.unfinished:
                try:
                    outputs = engine.step()
                except Exception as error:  # noqa: BLE001 - a failed step fails its requests, not the server
                    log.error("a decoding step failed (%s: %s); its %d request(s) fail, the engine restarts",
                              type(error).__name__, error, len(by_id))
                    message = str(error) if isinstance(error, LayerskipError) else "internal error while decoding"
                    for submission in by_id.values():
                        self._release(submission)
                        self.metrics.outcome("error")
                        submission.emit(Failed(500, message))
                    by_id.clear()
                    engine = self.engine = self.make_engine()
                    outputs = []
                self._dispatch(outputs, by_id)
            self.metrics.rows(engine.running, max(self._active - engine.running, 0))

    def _add(self, engine: Engine, submission: Submission, by_id: dict[int, Submission]) -> None:
        try:
            submission.engine_id = engine.add_request(submission.prompt_ids, submission.config, submission.decode)
        except Exception as error:  # noqa: BLE001 - a request the engine refuses fails alone
            self._release(submission)
            self.metrics.outcome("invalid")
            submission.emit(Failed(400, str(error) if isinstance(error, LayerskipError) else
                                   f"the engine refused this request ({type(error).__name__}: {error})"))
            return
        by_id[submission.engine_id] = submission
        self.metrics.queued(len(submission.prompt_ids))

    def _dispatch(self, outputs: list, by_id: dict[int, Submission]) -> None:
        now = time.perf_counter()
        for output in outputs:
            submission = by_id.get(output.request_id)
            if submission is None:
                continue
            first = submission.last_output is None
            self.metrics.tokens(len(output.token_ids), now - submission.arrived if first else None,
                                None if first else now - submission.last_output)  # type: ignore[operator]
            submission.last_output = now
            if output.finished:
                del by_id[output.request_id]
                result = output.result
                self.metrics.finished(result.stats)
                self.metrics.outcome("length" if result.stats.stop_reason == "max_steps" else "stop")
                self._release(submission)
                submission.emit(Finished(list(output.token_ids), result))
            elif output.token_ids:
                submission.emit(Tokens(list(output.token_ids)))
