"""A draft configuration: everything that defines how drafts are made, in one serializable record.

Written by ``layerskip tune`` and read by every command through ``--draft_config FILE``
(explicit flags override the file). ``build_drafter`` turns it into a ``Drafter``: the fast
early-exit drafter for a plain exit layer, the layer-wise drafter for dynamic exits and skips,
prompt lookup alone or in front of either (``draft``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from layerskip.model.adapter import read_adapter_config
from layerskip.drafters.adapter import AdapterDrafter
from layerskip.drafters.length import LENGTH_POLICIES, make_length_policy
from layerskip.drafters.base import Drafter
from layerskip.drafters.controller import PayoffController
from layerskip.drafters.early_exit import EarlyExitDrafter
from layerskip.errors import LayerskipError, read_json_object
from layerskip.decoding.exit_criteria import ExitCriterion, make_criterion
from layerskip.drafters.layerwise import LayerwiseDrafter
from layerskip.model.decoder import SkipSet
from layerskip.validation import as_int, check_fields
from layerskip.drafters.prompt_lookup import LookupOrModelDrafter, PromptLookupDrafter
from layerskip.model.config import check_exit_layer

CRITERION_OPTIONS = ("threshold", "patience", "temperature", "high", "low")
#: who drafts: the model itself, prompt lookup alone, or the lookup when it matches and the model otherwise
DRAFTS = ("model", "prompt_lookup", "prompt_lookup+model")
#: whether a controller may stop drafting for a sequence where drafting does not pay (``layerskip.drafters.controller``)
DRAFT_CONTROLS = ("none", "payoff")
#: num_speculations of prompt lookup alone when none is given
PROMPT_LOOKUP_SPECULATIONS = 10


@dataclass(frozen=True)
class DraftConfig:
    exit_layer: int | None = None
    num_speculations: int | None = None
    criteria: str | None = None
    threshold: float | None = None
    patience: int | None = None
    temperature: float | None = None
    high: float | None = None
    low: float | None = None
    skip_attn: tuple[int, ...] = field(default_factory=tuple)
    skip_mlp: tuple[int, ...] = field(default_factory=tuple)
    layer_skip_proportion: float = 0.0
    draft_length: str = "fixed"
    confidence_threshold: float | None = None
    draft_adapter: str | None = None
    draft_vocab: int | None = None
    draft: str = "model"
    prompt_lookup_max_ngram: int = 3
    prompt_lookup_min_ngram: int = 1
    #: longest lookup draft (transformers' ``prompt_lookup_num_tokens``); None: ``num_speculations``.
    #: With ``prompt_lookup+model`` the lookup may draft long copies while the model drafts ``k``.
    prompt_lookup_num_tokens: int | None = None
    #: lookup drafts at most ``floor(factor * m)`` tokens, m the match's backward extent (SuffixDecoding);
    #: None: always the full length
    prompt_lookup_factor: float | None = None
    #: ``payoff``: per sequence, draft only while drafting rounds emit tokens faster than plain steps
    draft_control: str = "none"

    @property
    def uses_model(self) -> bool:
        """Whether the model drafts (every draft but prompt lookup alone needs its exit layer)."""
        return self.draft != "prompt_lookup"

    def with_defaults(self) -> "DraftConfig":
        """Prompt lookup alone drafts ``PROMPT_LOOKUP_SPECULATIONS`` tokens when no number is given."""
        if self.uses_model or self.num_speculations is not None:
            return self
        return replace(self, num_speculations=PROMPT_LOOKUP_SPECULATIONS)

    @property
    def is_complete(self) -> bool:
        """Enough to draft: a number of speculations, and an exit layer where the plain early-exit draft needs one."""
        return self.num_speculations is not None and (not self.uses_model or self.defines_draft)

    @property
    def is_plain(self) -> bool:
        """A fixed exit layer (or a draft adapter) and nothing else: the fast early-exit drafter."""
        return not (self.criteria or self.skip_attn or self.skip_mlp or self.layer_skip_proportion)

    @property
    def defines_draft(self) -> bool:
        """Whether it says what drafts: an exit layer, a dynamic exit / skip, or a draft adapter."""
        return self.exit_layer is not None or not self.is_plain or self.draft_adapter is not None

    def criterion(self, seed: int = 0) -> ExitCriterion | None:
        if not self.criteria:
            return None
        options: dict[str, Any] = {k: getattr(self, k) for k in CRITERION_OPTIONS}
        if self.criteria == "random":
            options["seed"] = seed
        return make_criterion(self.criteria, **options)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from their defaults (always exit_layer and num_speculations)."""
        defaults = DraftConfig()
        out = {k: v for k, v in asdict(self).items()
               if v != getattr(defaults, k) or k in ("exit_layer", "num_speculations")}
        for key in ("skip_attn", "skip_mlp"):
            if key in out:
                out[key] = list(out[key])
        return out

    def label(self) -> str:
        parts = []
        for key, value in self.to_dict().items():
            if isinstance(value, list):
                value = "+".join(map(str, value))
            parts.append(f"{key}={value}")
        return ",".join(parts)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "draft config") -> "DraftConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names - {"skip_layers", "measured"})
        if unknown:
            raise LayerskipError(f"{source}: unknown key(s) {', '.join(unknown)}")
        values = {k: v for k, v in raw.items() if k in names}
        check_fields(cls, values, source)
        if "skip_layers" in raw:
            values.update(parse_skip_layers(raw["skip_layers"], source))
        for key in ("skip_attn", "skip_mlp"):
            if key in values:
                values[key] = tuple(sorted(int(x) for x in values[key]))
        try:
            return cls(**values)
        except TypeError as exc:
            raise LayerskipError(f"{source}: {exc}") from None

    def merged(self, **overrides: Any) -> "DraftConfig":
        """This config with the given (non-None) values replacing its own. A new ``draft`` kind drops
        the settings of this config that kind cannot use (a recommendation's lookup length under
        ``draft=model``, its adapter and draft vocabulary under ``draft=prompt_lookup``); the same
        settings given in ``overrides`` are kept, and refused by ``validate`` if they conflict."""
        values = {k: v for k, v in overrides.items() if v is not None}
        base = self
        if values.get("draft") == "model":
            base = replace(base, prompt_lookup_num_tokens=None, prompt_lookup_factor=None)
        elif values.get("draft") == "prompt_lookup":
            base = replace(base, draft_adapter=None, draft_vocab=None)
        return replace(base, **values)


def parse_skip_layers(value: Any, source: str = "`skip_layers`") -> dict[str, tuple[int, ...]]:
    """``'{"attn": [..], "mlp": [..]}'`` (a JSON string or a dict) -> skip_attn/skip_mlp."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise LayerskipError(f"{source}: expected JSON like '{{\"attn\": [3], \"mlp\": [4]}}' ({exc.msg})") from None
    if not isinstance(value, dict) or set(value) - {"attn", "mlp"}:
        raise LayerskipError(f'{source}: expected an object with "attn" and/or "mlp" lists')
    lists = {k: value.get(k, []) for k in ("attn", "mlp")}
    if not all(isinstance(v, list) for v in lists.values()):
        raise LayerskipError(f'{source}: expected an object with "attn" and/or "mlp" lists')
    return {f"skip_{k}": tuple(sorted(as_int(x, f"{source} {k}") for x in v)) for k, v in lists.items()}


def load_draft_config(path: str) -> DraftConfig:
    raw = read_json_object(path, f"`draft_config` {path}", f"`draft_config` {path}: no such file")
    return DraftConfig.from_dict(raw.get("draft", raw), f"`draft_config` {path}")


def validate(config: DraftConfig, num_layers: int, speculative: bool) -> None:
    """Range checks, each one error naming the setting."""
    deepest = num_layers - 1 if speculative and config.is_plain else num_layers
    if config.exit_layer is not None:
        check_exit_layer(config.exit_layer, num_layers, deepest=deepest)
    if speculative and (config.num_speculations is None or config.num_speculations < 1):
        raise LayerskipError(f"`num_speculations` must be >= 1, got {config.num_speculations}")
    for kind in ("attn", "mlp"):
        bad = [l for l in getattr(config, f"skip_{kind}") if not 0 <= l < num_layers]
        if bad:
            raise LayerskipError(f"`skip_layers` {kind} {bad} outside 0..{num_layers - 1}")
    if not 0 <= config.layer_skip_proportion < 1:
        raise LayerskipError("`layer_skip_proportion` must be in [0, 1)")
    if config.draft_length not in LENGTH_POLICIES:
        raise LayerskipError(f"`draft_length` must be one of {', '.join(LENGTH_POLICIES)}")
    if config.criteria:
        config.criterion()  # unknown names / options raise here
    if config.draft_adapter is not None:
        if not config.is_plain:
            raise LayerskipError("`draft_adapter` drafts at the adapter's exit layer: it excludes `criteria` and layer skipping")
        trained_at = read_adapter_config(config.draft_adapter).exit_layer
        if config.exit_layer is not None and config.exit_layer != trained_at:
            raise LayerskipError(f"`exit_layer` {config.exit_layer} differs from the draft adapter's exit layer {trained_at}")
        check_exit_layer(trained_at, num_layers, f"`draft_adapter` {config.draft_adapter}: exit layer")
    if config.draft_vocab is not None and (config.draft_vocab < 1 or not config.is_plain):
        raise LayerskipError("`draft_vocab` must be >= 1 and applies to a fixed exit layer or a draft adapter")
    if config.draft not in DRAFTS:
        raise LayerskipError(f"`draft` must be one of {', '.join(DRAFTS)}, got {config.draft!r}")
    if config.draft != "model" and not speculative:
        raise LayerskipError(f"`draft` {config.draft} is a draft strategy: use `generation_strategy` self_speculative")
    low, high = config.prompt_lookup_min_ngram, config.prompt_lookup_max_ngram
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise LayerskipError(f"`prompt_lookup_min_ngram` {low} and `prompt_lookup_max_ngram` {high}: need 1 <= min <= max")
    lookup_k = config.prompt_lookup_num_tokens
    if lookup_k is not None and (isinstance(lookup_k, bool) or not isinstance(lookup_k, int) or lookup_k < 1 or config.draft == "model"):
        raise LayerskipError(f"`prompt_lookup_num_tokens` {lookup_k}: needs an integer >= 1 and `draft` prompt_lookup or prompt_lookup+model")
    factor = config.prompt_lookup_factor
    if factor is not None and (isinstance(factor, bool) or not factor > 0 or config.draft == "model"):
        raise LayerskipError(f"`prompt_lookup_factor` {factor}: needs a number > 0 and `draft` prompt_lookup or prompt_lookup+model")
    if config.draft_control not in DRAFT_CONTROLS:
        raise LayerskipError(f"`draft_control` must be one of {', '.join(DRAFT_CONTROLS)}, got {config.draft_control!r}")
    if config.draft_control != "none" and not speculative:
        raise LayerskipError(f"`draft_control` {config.draft_control} controls drafting: use `generation_strategy` self_speculative")
    if config.draft == "prompt_lookup" and (config.draft_adapter is not None or config.draft_vocab is not None):
        raise LayerskipError("`draft` prompt_lookup drafts without the model: `draft_adapter` and `draft_vocab` need `draft` model or prompt_lookup+model")


def build_drafter(config: DraftConfig, num_layers: int, seed: int = 0) -> Drafter:
    """The drafter a (validated) config describes."""
    if config.draft_control == "payoff":
        return PayoffController(build_drafter(replace(config, draft_control="none"), num_layers, seed))
    config = config.with_defaults()
    k = config.num_speculations or 1
    if config.draft != "model":
        lookup = PromptLookupDrafter(config.prompt_lookup_num_tokens or k, config.prompt_lookup_max_ngram,
                                     config.prompt_lookup_min_ngram, config.prompt_lookup_factor)
        if not config.uses_model:
            return lookup
        return LookupOrModelDrafter(lookup, build_drafter(replace(config, draft="model"), num_layers, seed))
    length = make_length_policy(config.draft_length, k, config.confidence_threshold)
    if config.draft_adapter is not None:
        return AdapterDrafter(config.draft_adapter, k, length, config.draft_vocab)
    if config.is_plain:
        if config.exit_layer is None:
            raise LayerskipError("self_speculative decoding needs `exit_layer`")
        return EarlyExitDrafter(config.exit_layer, k, length, config.draft_vocab)
    max_exit = config.exit_layer or (num_layers if (config.skip_attn or config.skip_mlp or config.layer_skip_proportion) and not config.criteria else num_layers - 1)
    return LayerwiseDrafter(max_exit, k, config.criterion(seed), SkipSet(frozenset(config.skip_attn), frozenset(config.skip_mlp)),
                            config.layer_skip_proportion, length, seed)
