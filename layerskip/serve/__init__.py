"""``layerskip serve``: an OpenAI-compatible HTTP server on the batched engine (continuous batching,
self-speculative decoding).

- ``protocol``: the request bodies (strict validation, unsupported parameters refused by name) and
  OpenAI's error shape;
- ``engine_loop``: the one thread that owns the engine, fed through a queue;
- ``text``: streamed text with stop strings held back;
- ``metrics``: the Prometheus metrics;
- ``app``: the FastAPI routes (``create_app``).
"""

from layerskip.serve.app import Backend, ServeSettings, create_app

__all__ = ["Backend", "ServeSettings", "create_app"]
