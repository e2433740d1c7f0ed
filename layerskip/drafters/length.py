"""How many tokens a drafter proposes per round.

- ``FixedLength``: always ``k`` (upstream's ``num_speculations``).
- ``ConfidenceThreshold``: stop when the draft token's probability falls below γ, with Draft &
  Verify's online update (Zhang et al. 2023, section 3.3): after each round with acceptance ratio
  m, ``m̄ ← β1·m̄ + (1−β1)·m``; ``γ̃ = γ + ε if m̄ < α else γ − ε`` (held when the draft reached its
  maximum length); ``γ ← β2·γ + (1−β2)·γ̃``.
- ``HeuristicLength``: transformers' "heuristic" schedule: k += 2 after a fully accepted round,
  k −= 1 otherwise (at least 1, at most ``max_tokens``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from layerskip.errors import LayerskipError

LENGTH_POLICIES = ("fixed", "threshold", "heuristic")


class LengthPolicy(ABC):
    #: the policy's name in ``LENGTH_POLICIES``
    name: str
    #: the number of speculations asked for (``num_speculations``)
    k: int
    #: the most tokens any round may draft
    max_tokens: int
    #: whether ``keep_drafting`` looks at the draft probability (the others skip computing it)
    uses_confidence: bool = False

    @abstractmethod
    def round_limit(self) -> int:
        """The most tokens to draft this round."""

    def keep_drafting(self, probability: float) -> bool:
        """Whether to draft another token after one whose draft probability was ``probability``."""
        return True

    def update(self, drafted: int, accepted: int, limit: int) -> None:
        """Learn from a verified round (``limit``: the round's maximum)."""

    def reset(self) -> None:
        """Forget what was learnt (a new generation starts from the configured state)."""


class FixedLength(LengthPolicy):
    name = "fixed"

    def __init__(self, k: int) -> None:
        if k < 1:
            raise LayerskipError("num_speculations must be >= 1")
        self.k = self.max_tokens = k

    def round_limit(self) -> int:
        return self.max_tokens


class ConfidenceThreshold(LengthPolicy):
    name = "threshold"
    uses_confidence = True

    def __init__(self, k: int, gamma: float = 0.6, beta1: float = 0.5, alpha: float = 0.9, epsilon: float = 0.01,
                 beta2: float = 0.9, update: bool = True) -> None:
        if k < 1:
            raise LayerskipError("num_speculations must be >= 1")
        if not 0 <= gamma <= 1:
            raise LayerskipError("the confidence threshold must be in [0, 1]")
        self.k = self.max_tokens = k
        self.gamma = self.initial_gamma = gamma
        self.beta1, self.alpha, self.epsilon, self.beta2, self.online = beta1, alpha, epsilon, beta2, update
        self.mean_acceptance = 1.0

    def round_limit(self) -> int:
        return self.max_tokens

    def keep_drafting(self, probability: float) -> bool:
        return probability >= self.gamma

    def reset(self) -> None:
        self.gamma, self.mean_acceptance = self.initial_gamma, 1.0

    def update(self, drafted: int, accepted: int, limit: int) -> None:
        if not self.online or drafted == 0:
            return
        m = accepted / drafted
        self.mean_acceptance = self.beta1 * self.mean_acceptance + (1 - self.beta1) * m
        if drafted >= limit:  # reached the maximum: no signal about the threshold
            target = self.gamma
        else:
            target = self.gamma + self.epsilon if self.mean_acceptance < self.alpha else self.gamma - self.epsilon
        self.gamma = min(1.0, max(0.0, self.beta2 * self.gamma + (1 - self.beta2) * target))


class HeuristicLength(LengthPolicy):
    name = "heuristic"

    def __init__(self, k: int, max_tokens: int = 16) -> None:
        if k < 1:
            raise LayerskipError("num_speculations must be >= 1")
        self.k = self.current = k
        self.max_tokens = max(k, max_tokens)

    def round_limit(self) -> int:
        return self.current

    def reset(self) -> None:
        self.current = self.k

    def update(self, drafted: int, accepted: int, limit: int) -> None:
        if drafted == 0:
            return
        self.current = min(self.max_tokens, self.current + 2) if accepted == drafted else max(1, self.current - 1)


def make_length_policy(name: str, k: int, gamma: float | None = None, max_tokens: int | None = None) -> LengthPolicy:
    if name == "fixed":
        return FixedLength(k)
    if name == "threshold":
        return ConfidenceThreshold(k, gamma if gamma is not None else 0.6)
    if name == "heuristic":
        return HeuristicLength(k, max_tokens or max(16, k))
    raise LayerskipError(f"unknown draft length policy {name!r} (choose from {', '.join(LENGTH_POLICIES)})")
