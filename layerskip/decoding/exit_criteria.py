"""Dynamic early-exit criteria: after each layer, decide whether a token may leave the model.

Each criterion sees a ``LayerView`` of the token's hidden state after ``layer`` layers, with the
final norm and the shared unembedding applied lazily (only criteria that need logits pay for
them). Defaults follow the papers and the seed forks:

| name | exits when | default | source |
| --- | --- | --- | --- |
| ``cosine_similarity`` | cos(norm(h_l), norm(h_{l-1})) > threshold | 0.95 | CALM state saturation |
| ``token_repeat`` | argmax unchanged for ``patience`` consecutive layers | 3 | PABEE patience |
| ``max_probability`` | max softmax > threshold (or τ(l) = 0.99·r^0.75 + 0.75·(1-r^0.75), r=(L-l)/L) | τ(l) | CALM softmax / seed fork |
| ``top2_margin`` | p(1) - p(2) > threshold | 0.5 | CALM softmax response |
| ``entropy_based`` | entropy of softmax(logits / temperature) < threshold | 1.0 nats, T=1 | DeeBERT |
| ``convergence`` | abs(maxp_l - maxp_{l-1}) <= threshold | 0.01 | seed fork |
| ``random`` | at a layer drawn uniformly from [E/4, 3E/4] | | seed fork |
| ``logits_future`` | at the current exit layer; this token's max probability moves the next token's exit layer down (> ``high``) or up (< ``low``) | 0.9 / 0.5 | seed fork |

Aliases: ``consistent_tokens`` is the seed fork's name of ``token_repeat`` with its patience: the
same token at four consecutive layers (``patience`` 4; ``token_repeat`` keeps PABEE's 3), and
``logits_current`` = ``max_probability``.
"""

from __future__ import annotations

import inspect
import random
from abc import ABC, abstractmethod
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from layerskip.errors import LayerskipError
from layerskip.model.decoder import LlamaForCausalLM


class LayerView:
    """A token's state after ``layer`` layers: hidden ``[1, 1, dim]`` and lazy derived values."""

    def __init__(self, model: LlamaForCausalLM, hidden: torch.Tensor, layer: int) -> None:
        self.model, self.hidden, self.layer = model, hidden, layer

    @cached_property
    def normed(self) -> torch.Tensor:
        """``norm(h)`` ``[dim]`` float32."""
        return self.model.model.norm(self.hidden)[0, -1].float()

    @cached_property
    def logits(self) -> torch.Tensor:
        """``unembed(h)`` ``[vocab]`` float32."""
        return self.model.lm_head(self.model.model.norm(self.hidden))[0, -1].float()

    @cached_property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(-1)


class ExitCriterion(ABC):
    """Decides per layer whether the current token exits. ``start_token`` resets per-token state."""

    name: str = ""

    def start_token(self, max_layer: int) -> None:
        self.max_layer = max_layer

    @abstractmethod
    def should_exit(self, view: LayerView) -> bool: ...

    def observe_exit(self, view: LayerView) -> None:
        """Called with the view at the layer the token left from."""


class SuccessiveLayers(ExitCriterion):
    """Exits when a measure of the token's state after this layer is close to the one after the previous layer."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def start_token(self, max_layer: int) -> None:
        super().start_token(max_layer)
        self.previous: Any = None

    @abstractmethod
    def measure(self, view: LayerView) -> Any: ...

    @abstractmethod
    def close(self, current: Any, previous: Any) -> bool: ...

    def should_exit(self, view: LayerView) -> bool:
        current, previous = self.measure(view), self.previous
        self.previous = current
        return previous is not None and self.close(current, previous)


class CosineSimilarity(SuccessiveLayers):
    name = "cosine_similarity"

    def __init__(self, threshold: float = 0.95) -> None:
        super().__init__(threshold)

    def measure(self, view: LayerView) -> torch.Tensor:
        return view.normed

    def close(self, current: torch.Tensor, previous: torch.Tensor) -> bool:
        return float(F.cosine_similarity(current, previous, dim=0)) > self.threshold


class TokenRepeat(ExitCriterion):
    name = "token_repeat"

    def __init__(self, patience: int = 3) -> None:
        if patience < 1:
            raise LayerskipError("token_repeat patience must be >= 1")
        self.patience = patience

    def start_token(self, max_layer: int) -> None:
        super().start_token(max_layer)
        self.last, self.count = -1, 0

    def should_exit(self, view: LayerView) -> bool:
        token = int(view.logits.argmax())
        self.count = self.count + 1 if token == self.last else 1
        self.last = token
        return self.count >= self.patience


def layer_threshold(layer: int, num_layers: int) -> float:
    """The seed fork's τ(l) = 0.99·r^0.75 + 0.75·(1 − r^0.75), r = (L − l)/L."""
    r = (num_layers - layer) / num_layers
    w = r**0.75
    return 0.99 * w + 0.75 * (1 - w)


class MaxProbability(ExitCriterion):
    name = "max_probability"

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold

    def should_exit(self, view: LayerView) -> bool:
        tau = self.threshold if self.threshold is not None else layer_threshold(view.layer, view.model.num_layers)
        return float(view.probs.max()) > tau


class Top2Margin(ExitCriterion):
    name = "top2_margin"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def should_exit(self, view: LayerView) -> bool:
        top = view.probs.topk(2).values
        return float(top[0] - top[1]) > self.threshold


class EntropyBased(ExitCriterion):
    name = "entropy_based"

    def __init__(self, threshold: float = 1.0, temperature: float = 1.0) -> None:
        self.threshold, self.temperature = threshold, temperature

    def should_exit(self, view: LayerView) -> bool:
        logp = (view.logits / self.temperature).log_softmax(-1)
        entropy = -(logp.exp() * logp).sum()
        return float(entropy) < self.threshold


class Convergence(SuccessiveLayers):
    name = "convergence"

    def __init__(self, threshold: float = 0.01) -> None:
        super().__init__(threshold)

    def measure(self, view: LayerView) -> float:
        return float(view.probs.max())

    def close(self, current: float, previous: float) -> bool:
        return abs(current - previous) <= self.threshold


class RandomExit(ExitCriterion):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def start_token(self, max_layer: int) -> None:
        super().start_token(max_layer)
        low, high = max(1, max_layer // 4), max(1, (3 * max_layer) // 4)
        self.target = self.rng.randint(low, max(low, high))

    def should_exit(self, view: LayerView) -> bool:
        return view.layer >= self.target


class LogitsFuture(ExitCriterion):
    """Exit at the current layer; this token's confidence there moves the next token's exit."""

    name = "logits_future"

    def __init__(self, high: float = 0.9, low: float = 0.5) -> None:
        self.high, self.low = high, low
        self.current: int | None = None

    def start_token(self, max_layer: int) -> None:
        super().start_token(max_layer)
        if self.current is None or self.current > max_layer:
            self.current = max_layer

    def should_exit(self, view: LayerView) -> bool:
        return view.layer >= (self.current or self.max_layer)

    def observe_exit(self, view: LayerView) -> None:
        confidence = float(view.probs.max())
        if confidence > self.high:
            self.current = max(1, view.layer - 1)
        elif confidence < self.low:
            self.current = min(self.max_layer, view.layer + 1)


CRITERIA: dict[str, type[ExitCriterion]] = {
    c.name: c for c in (CosineSimilarity, TokenRepeat, MaxProbability, Top2Margin, EntropyBased, Convergence, RandomExit, LogitsFuture)
}
ALIASES = {"consistent_tokens": "token_repeat", "logits_current": "max_probability"}
#: the defaults an alias brings with it (the seed fork's consistent_tokens: the same token four times in a row)
ALIAS_DEFAULTS: dict[str, dict[str, Any]] = {"consistent_tokens": {"patience": 4}}


def make_criterion(name: str, **options: Any) -> ExitCriterion:
    """``name`` (or an alias) with its options (None values mean the default)."""
    key = ALIASES.get(name, name)
    if key not in CRITERIA:
        raise LayerskipError(f"unknown criterion {name!r} (choose from {', '.join([*CRITERIA, *ALIASES])})")
    cls = CRITERIA[key]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = [k for k, v in options.items() if v is not None and k not in accepted]
    if unknown:
        raise LayerskipError(f"criterion {key} takes no option(s) {', '.join(unknown)} (it takes: {', '.join(sorted(accepted)) or 'none'})")
    given = {k: v for k, v in options.items() if v is not None}
    return cls(**{**ALIAS_DEFAULTS.get(name, {}), **given})

