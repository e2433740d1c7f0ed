"""The server's Prometheus metrics (``GET /metrics``), named like vLLM's with a ``layerskip:`` prefix:
requests by outcome, prompt and generated tokens, queue depth and running rows, time to first token and
inter-token latency, and the speculative counters ``spec_decode_num_drafts`` / ``num_draft_tokens`` /
``num_accepted_tokens``. Each server has a registry of its own."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from layerskip.decoding.results import GenerationStats

#: how a request ended: stop / length (served), aborted (the client left), error (the engine failed it),
#: rejected (queue full or shutting down), invalid (a 4xx before it was queued)
OUTCOMES = ("stop", "length", "aborted", "error", "rejected", "invalid")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
                    5.0, 10.0)
_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class Metrics:
    def __init__(self, model_name: str) -> None:
        self.registry = registry = CollectorRegistry()
        labels = ["model_name"]
        self.requests = Counter("layerskip:requests", "Requests by how they ended", labels + ["outcome"],
                                registry=registry)
        self.prompt_tokens = Counter("layerskip:prompt_tokens", "Prompt tokens of the queued requests", labels,
                                     registry=registry)
        self.generation_tokens = Counter("layerskip:generation_tokens", "Tokens generated", labels, registry=registry)
        self.running = Gauge("layerskip:num_requests_running", "Rows decoding now", labels, registry=registry)
        self.waiting = Gauge("layerskip:num_requests_waiting", "Requests queued for a row (queue depth)", labels,
                             registry=registry)
        self.ttft = Histogram("layerskip:time_to_first_token_seconds", "From arrival to the first token", labels,
                              buckets=_TTFT_BUCKETS, registry=registry)
        self.itl = Histogram("layerskip:inter_token_latency_seconds",
                             "Between a request's outputs, per token (a round's time shared by its tokens)", labels,
                             buckets=_LATENCY_BUCKETS, registry=registry)
        self.num_drafts = Counter("layerskip:spec_decode_num_drafts", "Verifications that checked a draft", labels,
                                  registry=registry)
        self.num_draft_tokens = Counter("layerskip:spec_decode_num_draft_tokens", "Tokens drafted", labels,
                                        registry=registry)
        self.num_accepted_tokens = Counter("layerskip:spec_decode_num_accepted_tokens", "Drafted tokens accepted",
                                           labels, registry=registry)
        self.model_name = model_name
        for outcome in OUTCOMES:  # every series exists from the start (a rate over 0 is 0, not absent)
            self.requests.labels(model_name, outcome)

    def outcome(self, outcome: str) -> None:
        self.requests.labels(self.model_name, outcome).inc()

    def queued(self, prompt_tokens: int) -> None:
        self.prompt_tokens.labels(self.model_name).inc(prompt_tokens)

    def tokens(self, count: int, since_arrival: float | None, gap: float | None) -> None:
        """``count`` new tokens of one request: its first output ``since_arrival`` seconds after it came,
        a later one ``gap`` seconds after its previous output."""
        name = self.model_name
        self.generation_tokens.labels(name).inc(count)
        if since_arrival is not None:
            self.ttft.labels(name).observe(since_arrival)
        elif gap is not None and count > 0:
            for _ in range(count):
                self.itl.labels(name).observe(gap / count)

    def finished(self, stats: GenerationStats) -> None:
        name = self.model_name
        self.num_drafts.labels(name).inc(stats.num_drafts)
        self.num_draft_tokens.labels(name).inc(stats.num_draft_tokens)
        self.num_accepted_tokens.labels(name).inc(stats.num_accepted_tokens)

    def rows(self, running: int, waiting: int) -> None:
        self.running.labels(self.model_name).set(running)
        self.waiting.labels(self.model_name).set(waiting)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
