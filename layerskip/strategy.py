"""A decoding strategy resolved for one model: the drafter, the target depth, a dynamic exit."""

from __future__ import annotations

from dataclasses import dataclass

from layerskip.draft_config import DraftConfig, build_drafter, validate
from layerskip.drafting import Drafter
from layerskip.errors import LayerskipError
from layerskip.exit_criteria import ExitCriterion


@dataclass(frozen=True)
class Strategy:
    """A drafter (None: autoregressive), the target depth, and a dynamic exit for the target."""

    drafter: Drafter | None
    depth: int
    criterion: ExitCriterion | None = None


def strategy_from_config(name: str, config: DraftConfig, num_layers: int, seed: int = 0) -> Strategy:
    speculative = name == "self_speculative"
    config = config.with_defaults()
    if speculative and not config.is_complete:
        raise LayerskipError(
            "self_speculative decoding needs --exit_layer and --num_speculations (this model recommends none; "
            "--draft prompt_lookup needs neither)"
        )
    validate(config, num_layers, speculative)
    if speculative:
        return Strategy(build_drafter(config, num_layers, seed), num_layers)
    if config.skip_attn or config.skip_mlp or config.layer_skip_proportion:
        raise LayerskipError("layer skipping is a draft strategy: use --generation_strategy self_speculative")
    if config.draft_adapter is not None or config.draft_vocab is not None:
        raise LayerskipError("--draft_adapter and --draft_vocab are draft settings: use --generation_strategy self_speculative")
    return Strategy(None, config.exit_layer or num_layers, config.criterion(seed))
