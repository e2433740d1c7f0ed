"""What a generation is asked to do (``GenerationConfig``: length, sampling, stop conditions, seed) and
what it decodes with (``Decoding``: autoregressive, early exit, a drafter, a dynamic exit criterion)."""

from __future__ import annotations

from dataclasses import dataclass, field

from layerskip.decoding.exit_criteria import ExitCriterion
from layerskip.decoding.sampling import SamplingConfig
from layerskip.drafters.base import Drafter
from layerskip.errors import LayerskipError


@dataclass(frozen=True)
class GenerationConfig:
    max_steps: int = 512
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_token_ids: tuple[int, ...] = ()
    stop_words: tuple[str, ...] = ()
    seed: int | None = 42

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise LayerskipError(f"`max_steps` must be >= 1, got {self.max_steps}")


@dataclass(frozen=True)
class Decoding:
    """What the decoding loop decodes with (``layerskip.decoding.strategy.Strategy.decoding`` builds it from a strategy).

    - ``drafter``: None for autoregressive decoding, else self-speculative decoding with it.
    - ``depth``: layers of the target model (None: all; fewer = early-exit inference).
    - ``criterion``: autoregressive dynamic early exit (no drafter): each token leaves at the first
      layer the criterion accepts, at most ``depth`` (``layerskip.decoding.dynamic_exit``).
    """

    drafter: Drafter | None = None
    depth: int | None = None
    criterion: ExitCriterion | None = None

    def __post_init__(self) -> None:
        if self.criterion is not None and self.drafter is not None:
            raise LayerskipError("a dynamic exit criterion for the target excludes a drafter (give the criterion to the drafter)")


#: full-depth autoregressive decoding
AUTOREGRESSIVE = Decoding()
