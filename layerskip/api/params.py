"""``SamplingParams``: how one request is decoded (vLLM's names and defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.sampling import SamplingConfig
from layerskip.errors import LayerskipError


@dataclass(frozen=True)
class SamplingParams:
    """``temperature`` 0 is greedy; otherwise sampling with ``top_k`` (0 or -1: off) then ``top_p`` (1: off).
    Generation stops at ``max_tokens``, at the model's end-of-sequence tokens (unless ``ignore_eos``), at
    ``stop_token_ids`` and at the ``stop`` strings (not included in the text). ``seed``: the request's own
    random stream (None: 0, reproducible)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or \
                not math.isfinite(self.temperature) or self.temperature < 0:
            raise LayerskipError(f"`temperature` must be a finite number >= 0, got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise LayerskipError(f"`top_p` must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise LayerskipError(f"`top_k` must be an integer >= -1 (0 or -1: off), got {self.top_k!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise LayerskipError(f"`max_tokens` must be an integer >= 1, got {self.max_tokens!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise LayerskipError(f"`seed` must be an integer >= 0, got {self.seed!r}")
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.stop_token_ids):
            raise LayerskipError(f"`stop_token_ids` must be token ids (integers >= 0), got {self.stop_token_ids!r}")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise LayerskipError(f"`stop` must be a string or a list of strings, got {self.stop!r}")

    @property
    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)

    def generation_config(self, eos_token_ids: tuple[int, ...], vocab_size: int) -> GenerationConfig:
        """The decoding loop's settings for this request on a model with these stop tokens and vocabulary."""
        outside = [i for i in self.stop_token_ids if i >= vocab_size]
        if outside:
            raise LayerskipError(f"`stop_token_ids` {outside[0]} is outside the vocabulary 0..{vocab_size - 1}")
        sample = self.temperature > 0
        sampling = SamplingConfig(sample=sample, temperature=self.temperature if sample else 1.0,
                                  top_k=max(self.top_k, 0), top_p=self.top_p)
        stops = tuple(dict.fromkeys([*(() if self.ignore_eos else eos_token_ids), *self.stop_token_ids]))
        return GenerationConfig(self.max_tokens, sampling, stops, self.stop_strings, 0 if self.seed is None else self.seed)
