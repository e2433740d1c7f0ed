"""Automatic search for the fastest lossless draft configuration (Draft & Verify's Bayesian
optimization, Zhang et al. 2023, widened to exit layer, k, skip sets, criteria and draft length).

Every trial decodes the same calibration prompts greedily and is scored by measured tokens/s;
optuna's TPE sampler proposes the next configuration. All candidates are lossless: the search
changes only how drafts are made, never what is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from layerskip.model.adapter import read_adapter_config
from layerskip.drafters.config import DraftConfig
from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.model.decoder import LlamaForCausalLM
from layerskip.decoding.strategy import Strategy

CRITERION_RANGES = {
    "max_probability": (0.3, 0.99),
    "top2_margin": (0.1, 0.95),
    "cosine_similarity": (0.8, 0.999),
    "entropy_based": (0.1, 3.0),
}


@dataclass
class TuneResult:
    best: DraftConfig
    best_tokens_per_second: float
    default: DraftConfig | None
    default_tokens_per_second: float | None
    autoregressive_tokens_per_second: float
    trials: int
    history: list[dict[str, Any]]

    @property
    def beats_default(self) -> bool:
        return self.default_tokens_per_second is None or self.best_tokens_per_second > self.default_tokens_per_second


def measure(model: LlamaForCausalLM, prompts: Sequence[list[int]], config: GenerationConfig, name: str, draft: DraftConfig) -> float:
    """Tokens per second over all prompts (generated tokens / decoding time)."""
    tokens, seconds = 0, 0.0
    for ids in prompts:
        stats = generate(model, ids, config, Strategy("layerskip", name, draft).decoding(model.num_layers)).stats
        tokens += stats.generated_tokens
        seconds += stats.total_time
    return tokens / seconds if seconds > 0 else 0.0


def suggest(trial: Any, num_layers: int, max_k: int, modes: Sequence[str], adapter: DraftConfig | None = None) -> DraftConfig:
    """A trial's configuration; with ``adapter`` (a config holding a draft adapter), its exit layer,
    adapter and draft vocabulary stay fixed and only the plain-exit modes are searched."""
    if adapter is not None:
        exit_layer, modes = read_adapter_config(adapter.draft_adapter).exit_layer, ["early_exit"]
    else:
        exit_layer = trial.suggest_int("exit_layer", 1, num_layers - 1)
    k = trial.suggest_int("num_speculations", 1, max_k)
    mode = trial.suggest_categorical("mode", list(modes))
    values: dict[str, Any] = {"exit_layer": exit_layer, "num_speculations": k}
    if adapter is not None:
        values.update(draft_adapter=adapter.draft_adapter, draft_vocab=adapter.draft_vocab)
    if mode == "layer_skip":
        values["skip_attn"] = tuple(l for l in range(exit_layer) if trial.suggest_int(f"skip_attn_{l}", 0, 1))
        values["skip_mlp"] = tuple(l for l in range(exit_layer) if trial.suggest_int(f"skip_mlp_{l}", 0, 1))
    elif mode == "dynamic_exit":
        criteria = trial.suggest_categorical("criteria", list(CRITERION_RANGES))
        low, high = CRITERION_RANGES[criteria]
        values.update(criteria=criteria, threshold=trial.suggest_float(f"threshold_{criteria}", low, high))
    length = trial.suggest_categorical("draft_length", ["fixed", "threshold", "heuristic"])
    values["draft_length"] = length
    if length == "threshold":
        values["confidence_threshold"] = trial.suggest_float("confidence_threshold", 0.1, 0.9)
    return DraftConfig(**values)


def tune(
    model: LlamaForCausalLM,
    prompts: Sequence[list[int]],
    config: GenerationConfig,
    trials: int = 30,
    timeout: float | None = None,
    seed: int = 42,
    max_k: int = 8,
    modes: Sequence[str] = ("early_exit", "layer_skip", "dynamic_exit"),
    default: DraftConfig | None = None,
    on_trial: Callable[[int, float, float], None] | None = None,
) -> TuneResult:
    """Search ``trials`` configurations (or until ``timeout`` seconds); returns the best, with the
    autoregressive and default (e.g. the model's recommended fixed exit) rates measured alike."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    measure(model, prompts[:1], config, "autoregressive", DraftConfig())  # warm-up
    autoregressive = measure(model, prompts, config, "autoregressive", DraftConfig())
    default_tps = measure(model, prompts, config, "self_speculative", default) if default else None
    history: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        draft = suggest(trial, model.num_layers, max_k, modes, default if default and default.draft_adapter else None)
        tps = measure(model, prompts, config, "self_speculative", draft)
        history.append({"trial": trial.number, "draft": draft.to_dict(), "tokens_per_second": tps})
        return tps

    def callback(study: Any, trial: Any) -> None:
        if on_trial:
            on_trial(trial.number + 1, trial.value or 0.0, study.best_value)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    if default:
        first = {"num_speculations": min(default.num_speculations or 1, max_k), "mode": "early_exit", "draft_length": "fixed"}
        if default.draft_adapter is None:
            first["exit_layer"] = default.exit_layer
        study.enqueue_trial(first)
    study.optimize(objective, n_trials=trials, timeout=timeout, callbacks=[callback])
    best_entry = max(history, key=lambda h: h["tokens_per_second"])
    best = DraftConfig.from_dict(best_entry["draft"])
    # re-measure the winner and the default side by side, so noise in one trial cannot crown it
    best_tps = measure(model, prompts, config, "self_speculative", best)
    if default:
        default_tps = measure(model, prompts, config, "self_speculative", default)
    return TuneResult(best, best_tps, default, default_tps, autoregressive, len(history), history)
