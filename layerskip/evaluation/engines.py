"""Named decoding strategies and the engines that run them.

A strategy spec is written ``[hf:]NAME[:key=value,...]`` with NAME ``autoregressive`` or
``self_speculative`` and keys from ``DraftConfig`` (``exit_layer``/``e``,
``num_speculations``/``k``, ``criteria``, ``threshold``, ``patience``, ``skip_attn=1+3``,
``skip_mlp=2``, ``layer_skip_proportion``, ``draft_length``, ``confidence_threshold``,
``draft=prompt_lookup`` or ``draft=prompt_lookup+model``, ``prompt_lookup_max_ngram``,
``prompt_lookup_min_ngram``, or ``draft_config=FILE``). The ``hf:`` prefix runs Hugging Face transformers' ``generate`` on the
same checkpoint: plain, or with ``assistant_early_exit=E`` and ``num_assistant_tokens=k``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from layerskip.draft_config import DraftConfig, load_draft_config, validate
from layerskip.errors import LayerskipError
from layerskip.generation import GenerationConfig, generate
from layerskip.loading import LoadedModel
from layerskip.strategy import strategy_from_config

ENGINES = ("layerskip", "transformers")
NAMES = ("autoregressive", "self_speculative")
SHORT = {"e": "exit_layer", "k": "num_speculations"}
FIELD_TYPES = {f.name: f.type for f in fields(DraftConfig)}


@dataclass(frozen=True)
class StrategySpec:
    engine: str
    name: str
    draft: DraftConfig = DraftConfig()

    @property
    def exit_layer(self) -> int | None:
        return self.draft.exit_layer

    @property
    def num_speculations(self) -> int | None:
        return self.draft.num_speculations

    @property
    def label(self) -> str:
        prefix = "hf:" if self.engine == "transformers" else ""
        details = self.draft.label() if self.name == "self_speculative" else DraftConfig(
            exit_layer=self.draft.exit_layer, criteria=self.draft.criteria, threshold=self.draft.threshold,
            patience=self.draft.patience, temperature=self.draft.temperature, high=self.draft.high, low=self.draft.low).label()
        details = ",".join(p for p in details.split(",") if p and not p.endswith("=None"))
        return f"{prefix}{self.name}" + (f":{details}" if details else "")

    def baseline(self) -> "StrategySpec":
        """The full-depth autoregressive run of the same engine."""
        return StrategySpec(self.engine, "autoregressive")


def _value(key: str, raw: str, text: str) -> Any:
    kind = str(FIELD_TYPES[key])
    try:
        if key in ("skip_attn", "skip_mlp"):
            return tuple(sorted(int(x) for x in raw.split("+") if x))
        if "int" in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
        return raw
    except ValueError:
        raise LayerskipError(f"strategy {text!r}: bad value {raw!r} for {key}") from None


def parse_spec(text: str, defaults: DraftConfig = DraftConfig(), engine: str = "layerskip") -> StrategySpec:
    """Parse a strategy spec; self_speculative fills what it leaves out from ``defaults``."""
    head, _, tail = text.partition(":")
    if head == "hf":
        engine = "transformers"
        head, _, tail = tail.partition(":")
    if head not in NAMES:
        raise LayerskipError(f"unknown strategy {text!r} (use [hf:]autoregressive or [hf:]self_speculative[:exit_layer=E,num_speculations=k,...])")
    values: dict[str, Any] = {}
    base = defaults if head == "self_speculative" else DraftConfig()
    for item in filter(None, tail.split(",")):
        key, sep, raw = item.partition("=")
        key = SHORT.get(key.strip().lower(), key.strip().lower())
        if key == "draft_config" and sep:
            base = load_draft_config(raw)
            continue
        if key not in FIELD_TYPES or not sep:
            raise LayerskipError(f"strategy {text!r}: unknown setting {item!r}")
        values[key] = _value(key, raw.strip(), text)
    return StrategySpec(engine, head, base.merged(**values))


def validate_spec(spec: StrategySpec, num_layers: int) -> None:
    if spec.engine == "transformers":
        if spec.name == "autoregressive" and (spec.exit_layer is not None or spec.draft.criteria):
            raise LayerskipError("transformers has no early-exit inference; use hf:autoregressive without an exit layer")
        if spec.name == "self_speculative" and (spec.draft.draft_adapter or spec.draft.draft_vocab):
            raise LayerskipError(f"{spec.label}: transformers has no draft adapters or draft vocabularies")
        if spec.name == "self_speculative" and not (spec.draft.is_plain and spec.draft.draft == "model"):
            raise LayerskipError(f"{spec.label}: transformers only drafts with a fixed early exit (assistant_early_exit)")
        if spec.name == "self_speculative" and spec.draft.draft_length != "fixed":
            raise LayerskipError(f"{spec.label}: transformers drafts a fixed number of tokens; add draft_length=fixed to the strategy")
    draft = spec.draft.with_defaults()
    if spec.name == "self_speculative" and not draft.is_complete:
        raise LayerskipError(f"strategy {spec.label} needs an exit layer and a number of speculations")
    validate(draft, num_layers, spec.name == "self_speculative")


@dataclass
class Output:
    token_ids: list[int]
    text: str
    stats: dict[str, Any]


class LayerskipEngine:
    def __init__(self, loaded: LoadedModel, seed: int = 0) -> None:
        self.loaded = loaded
        self.seed = seed

    def run(self, spec: StrategySpec, prompt_ids: list[int], config: GenerationConfig) -> Output:
        chosen = strategy_from_config(spec.name, spec.draft, self.loaded.model.num_layers, self.seed)
        tok = self.loaded.tokenizer
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        result = generate(self.loaded.model, prompt_ids, config, chosen.drafter, chosen.depth, decode=decode,
                          exit_criterion=chosen.criterion)
        return Output(result.token_ids, decode(result.token_ids), result.stats.as_dict())


class TransformersEngine:
    """Hugging Face transformers' own ``generate`` on the same checkpoint and settings."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype, tokenizer: Any) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
        self.tokenizer = tokenizer
        self.device = device

    def run(self, spec: StrategySpec, prompt_ids: list[int], config: GenerationConfig) -> Output:
        s = config.sampling
        kwargs: dict[str, Any] = {"max_new_tokens": config.max_steps, "do_sample": s.sample, "pad_token_id": self.tokenizer.pad_token_id or 0}
        if s.sample:
            kwargs.update(temperature=s.temperature, top_k=s.top_k or None, top_p=s.top_p)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        if s.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = s.no_repeat_ngram_size
        if config.stop_token_ids:
            kwargs["eos_token_id"] = list(config.stop_token_ids)
        if config.stop_words:
            kwargs.update(stop_strings=list(config.stop_words), tokenizer=self.tokenizer)
        if spec.name == "self_speculative":
            kwargs.update(assistant_early_exit=spec.exit_layer, num_assistant_tokens=spec.num_speculations,
                          num_assistant_tokens_schedule="constant")
        inputs = torch.tensor([prompt_ids], device=self.device)
        if s.sample and config.seed is not None:
            torch.manual_seed(config.seed)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        ids = out[0, len(prompt_ids):].tolist()
        n = max(len(ids), 1)
        stats = {"generated_tokens": len(ids), "total_time": elapsed, "time_per_token": elapsed / n,
                 "tokens_per_second": len(ids) / elapsed if elapsed > 0 else 0.0, "acceptance_rate": None,
                 "time_to_first_token": None, "exit_layer": spec.exit_layer, "num_speculations": spec.num_speculations}
        return Output(ids, self.tokenizer.decode(ids, skip_special_tokens=True), stats)
