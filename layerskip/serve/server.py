"""Running the app on uvicorn with a graceful shutdown that exits 0.

On SIGTERM or SIGINT the server stops accepting connections and refuses new requests (503) at once; the
running requests may finish for ``grace`` seconds, then the engine ends them (a stream gets an error event
and ``data: [DONE]``, a plain request a 503), so their connections close before uvicorn's own backstop
(which would cancel the handlers with a traceback). Then the engine thread stops and ``serve`` returns.
"""

from __future__ import annotations

import signal
import socket
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, grace: float) -> None:
        super().__init__(config)
        self.app, self.grace = app, grace
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        engine_loop = getattr(self.app.state, "engine_loop", None)
        if engine_loop is None or self._timer is not None:
            return
        engine_loop.drain()
        self._timer = threading.Timer(self.grace, engine_loop.cancel_all)
        self._timer.daemon = True
        self._timer.start()


def serve(app: FastAPI, sock: socket.socket, grace: float, log_level: str = "info") -> bool:
    """Serve ``app`` on the listening ``sock`` until a signal; whether it started."""
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=grace + 10, lifespan="on",
                            proxy_headers=False, server_header=False)
    server = _Server(config, app, grace)
    # uvicorn raises the signal again once it has shut down: that second delivery finds these do-nothing
    # handlers, so a clean shutdown returns (and the command exits 0) instead of dying of the signal
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.started
