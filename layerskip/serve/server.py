"""Running the app: uvicorn on a thread, the engine loop on the main thread, and a graceful shutdown.

The engine steps on the thread that loaded the model (``layerskip.serve.engine_loop``: one OpenMP team,
spinning between parallel regions); uvicorn serves HTTP from a thread of its own (it installs no signal
handlers there). SIGTERM and SIGINT reach the main thread, whose handlers only queue the shutdown for
the engine loop to start between rounds: the server stops accepting connections and refuses new
requests (503) at once; the running requests may finish for ``grace`` seconds, then the engine ends them
(a stream gets an error event and ``data: [DONE]``, a plain request a 503), so their connections close
before uvicorn's own backstop (which would cancel the handlers with a traceback). Then uvicorn's
shutdown closes the engine loop, ``serve`` returns and the command exits 0.
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
    engine_loop = app.state.engine_loop
    engine_loop.prepare()  # the engine is built here, on the main thread, before a request can arrive

    def run_http() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            engine_loop.close()  # whatever ended uvicorn (a failed start too) ends the engine loop

    def on_signal(sig: int, frame: FrameType | None) -> None:
        engine_loop.call(lambda: server.handle_exit(sig, None))

    http = threading.Thread(target=run_http, name="uvicorn", daemon=True)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        http.start()
        engine_loop.run()
        http.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return server.started
