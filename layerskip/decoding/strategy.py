"""One decoding strategy, described once.

A ``Strategy`` is what every command decodes with: an engine (``layerskip`` or Hugging Face
``transformers``), a name (``autoregressive`` or ``self_speculative``) and a ``DraftConfig``. It is
built from the flags (``layerskip.cli.settings``), ``--draft_config`` files and ``--compare`` specs
(``Strategy.parse``), checked in one place (``Strategy.validate``), written in one stable string
form for tables, records and JSON (``Strategy.label``), and resolved for a model into the
``Decoding`` that ``layerskip.decoding.loop.generate`` runs (``Strategy.decoding``).

A spec is written ``[hf:]NAME[:key=value,...]`` with keys from ``DraftConfig`` (``exit_layer``/``e``,
``num_speculations``/``k``, ``criteria``, ``threshold``, ``patience``, ``skip_attn=1+3``,
``skip_mlp=2``, ``layer_skip_proportion``, ``draft_length``, ``confidence_threshold``,
``draft=prompt_lookup`` or ``draft=prompt_lookup+model``, ``prompt_lookup_max_ngram``,
``prompt_lookup_min_ngram``, ``prompt_lookup_num_tokens``, ``prompt_lookup_factor``, ``draft_adapter``, ``draft_vocab``, or ``draft_config=FILE``);
``key=none`` drops a setting the defaults (the model's recommendation) carry, e.g. ``draft_adapter=none``. The
``hf:`` prefix runs transformers' ``generate`` on the same checkpoint: plain, or with
``assistant_early_exit=E`` and ``num_assistant_tokens=k``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from layerskip.drafters.config import CRITERION_OPTIONS, DraftConfig, build_drafter, load_draft_config, validate
from layerskip.errors import LayerskipError
from layerskip.validation import field_types
from layerskip.decoding.settings import Decoding

ENGINES = ("layerskip", "transformers")
NAMES = ("autoregressive", "self_speculative")
#: short keys of a spec
SHORT = {"e": "exit_layer", "k": "num_speculations"}
#: the draft settings that apply to autoregressive decoding (early exit at a depth, dynamic exit)
AUTOREGRESSIVE_FIELDS = ("exit_layer", "criteria", *CRITERION_OPTIONS)
_FIELD_TYPES = field_types(DraftConfig)


@dataclass(frozen=True)
class Strategy:
    """How to decode: ``engine`` (``ENGINES``), ``name`` (``NAMES``) and the draft settings.

    For ``autoregressive`` only ``AUTOREGRESSIVE_FIELDS`` of ``draft`` mean anything (``exit_layer``:
    the depth of early-exit inference; ``criteria``: a dynamic exit); ``validate`` refuses draft-only
    settings there.
    """

    engine: str = "layerskip"
    name: str = "autoregressive"
    draft: DraftConfig = DraftConfig()

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise LayerskipError(f"unknown engine {self.engine!r} (use one of {', '.join(ENGINES)})")
        if self.name not in NAMES:
            raise LayerskipError(f"unknown strategy {self.name!r} (use one of {', '.join(NAMES)})")

    @property
    def speculative(self) -> bool:
        return self.name == "self_speculative"

    @property
    def exit_layer(self) -> int | None:
        return self.draft.exit_layer

    @property
    def num_speculations(self) -> int | None:
        return self.draft.num_speculations

    @property
    def label(self) -> str:
        """The stable string form: ``[hf:]NAME[:key=value,...]`` (what ``parse`` reads back)."""
        prefix = "hf:" if self.engine == "transformers" else ""
        draft = self.draft if self.speculative else DraftConfig(**{k: getattr(self.draft, k) for k in AUTOREGRESSIVE_FIELDS})
        details = ",".join(p for p in draft.label().split(",") if p and not p.endswith("=None"))
        return f"{prefix}{self.name}" + (f":{details}" if details else "")

    def __str__(self) -> str:
        return self.label

    def baseline(self) -> "Strategy":
        """The full-depth autoregressive run of the same engine."""
        return Strategy(self.engine, "autoregressive")

    def on_engine(self, engine: str) -> "Strategy":
        return replace(self, engine=engine)

    @classmethod
    def parse(cls, text: str, defaults: DraftConfig = DraftConfig(), engine: str = "layerskip") -> "Strategy":
        """Parse a spec; self_speculative fills what it leaves out from ``defaults``."""
        head, _, tail = text.partition(":")
        if head == "hf":
            engine = "transformers"
            head, _, tail = tail.partition(":")
        if head not in NAMES:
            raise LayerskipError(f"unknown strategy {text!r} (use [hf:]autoregressive or "
                                 "[hf:]self_speculative[:exit_layer=E,num_speculations=k,...])")
        values: dict[str, Any] = {}
        unset: dict[str, None] = {}
        base = defaults if head == "self_speculative" else DraftConfig()
        if engine == "transformers":  # assistant_early_exit takes only the recommendation's exit and k
            base = DraftConfig(exit_layer=base.exit_layer, num_speculations=base.num_speculations)
        for item in filter(None, tail.split(",")):
            key, sep, raw = item.partition("=")
            key = SHORT.get(key.strip().lower(), key.strip().lower())
            if key == "draft_config" and sep:
                base = load_draft_config(raw)
                continue
            if key not in _FIELD_TYPES or not sep:
                raise LayerskipError(f"strategy {text!r}: unknown setting {item!r}")
            if raw.strip().lower() == "none" and _FIELD_TYPES[key].optional:
                unset[key] = None  # drop what the defaults set (draft_adapter=none: the plain early exit)
                continue
            values[key] = _value(key, raw.strip(), text)
        return cls(engine, head, replace(base.merged(**values), **unset))

    def validate(self, num_layers: int) -> None:
        """Every check of a strategy against a ``num_layers``-layer model, with messages that name the flag."""
        if self.engine == "transformers":
            self._validate_transformers()
        draft = self.draft.with_defaults()
        if self.speculative and not draft.is_complete:
            raise LayerskipError(
                "self_speculative decoding needs `exit_layer` and `num_speculations` (this model recommends none; "
                "`draft` prompt_lookup needs neither)")
        validate(draft, num_layers, self.speculative)
        if self.speculative:
            return
        if draft.skip_attn or draft.skip_mlp or draft.layer_skip_proportion:
            raise LayerskipError("layer skipping is a draft strategy: use `generation_strategy` self_speculative")
        if draft.draft_adapter is not None or draft.draft_vocab is not None:
            raise LayerskipError("`draft_adapter` and `draft_vocab` are draft settings: use `generation_strategy` self_speculative")

    def _validate_transformers(self) -> None:
        if not self.speculative:
            if self.exit_layer is not None or self.draft.criteria:
                raise LayerskipError("transformers has no early-exit inference; use hf:autoregressive without an exit layer")
            return
        if self.draft.draft_adapter or self.draft.draft_vocab:
            raise LayerskipError(f"{self.label}: transformers has no draft adapters or draft vocabularies")
        if not (self.draft.is_plain and self.draft.draft == "model"):
            raise LayerskipError(f"{self.label}: transformers only drafts with a fixed early exit (assistant_early_exit)")
        if self.draft.draft_length != "fixed":
            raise LayerskipError(f"{self.label}: transformers drafts a fixed number of tokens; add draft_length=fixed to the strategy")

    def decoding(self, num_layers: int, seed: int = 0) -> Decoding:
        """What ``generate`` runs for this (layerskip) strategy on a ``num_layers``-layer model: a fresh
        drafter (self_speculative), or the early-exit depth and dynamic exit (autoregressive)."""
        if self.engine != "layerskip":
            raise LayerskipError(f"{self.label} runs on transformers, not on layerskip's generate")
        self.validate(num_layers)
        if self.speculative:
            return Decoding(drafter=build_drafter(self.draft, num_layers, seed))
        return Decoding(depth=self.draft.exit_layer, criterion=self.draft.criterion(seed))


def _value(key: str, raw: str, text: str) -> Any:
    kind = _FIELD_TYPES[key]
    try:
        if key in ("skip_attn", "skip_mlp"):
            return tuple(sorted(int(x) for x in raw.split("+") if x))
        if kind.base is int:
            return int(raw)
        if kind.base is float:
            return float(raw)
        return raw
    except ValueError:
        raise LayerskipError(f"strategy {text!r}: bad value {raw!r} for {key}") from None
