"""The decoding loop shared by every strategy.

Autoregressive decoding is the loop with no drafter (each round verifies just the pending token);
self-speculative decoding is the same loop with a drafter. With ``depth`` below the model's layer
count and no drafter, it is early-exit inference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Callable, Sequence

import torch

from layerskip.model.cache import KVCache
from layerskip.decoding.types import DecodeState, Draft, DraftReport
from layerskip.drafters.base import Drafter
from layerskip.decoding.dynamic_exit import dynamic_exit_logits
from layerskip.errors import LayerskipError
from layerskip.decoding.exit_criteria import ExitCriterion
from layerskip.decoding.limits import check_fits
from layerskip.model.decoder import LlamaForCausalLM
from layerskip.decoding.sampling import SamplingConfig, process_logits, select
from layerskip.decoding.stop_words import StopWords
from layerskip.decoding.types import Verdict
from layerskip.decoding.verification import verify

#: called with the new tokens of a round and how many of them were accepted drafts
TokenCallback = Callable[[list[int], int], None]


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
    """What ``generate`` decodes with (``layerskip.decoding.strategy.Strategy.decoding`` builds it from a strategy).

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


@dataclass
class GenerationStats:
    """What one generation did and how long it took. Drafter-specific settings and counters are the
    drafter's own report (``draft``); ``as_dict`` lays everything out flat, the JSON form (``--json``,
    benchmark records): ``num_speculations``, ``draft_length``, ``draft_vocab``, ``draft_adapter`` and
    prompt lookup's ``lookup_rounds`` / ``lookup_drafted_tokens`` / ``lookup_accepted_tokens``, the payoff
    controller's ``plain_rounds`` / ``probes`` (None where they do not apply). ``exit_layer`` is the draft's exit layer, or the depth of early-exit
    decoding."""

    generated_tokens: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    acceptance_rate: float | None = None
    mean_tokens_per_verification: float | None = None
    draft_forwards: int = 0
    verify_forwards: int = 0
    #: verifications that checked a draft (vLLM's ``num_drafts``)
    draft_rounds: int = 0
    exit_layer: int | None = None
    mean_exit_layer: float | None = None
    exit_layer_histogram: dict[int, int] | None = None
    stop_reason: str = "max_steps"
    time_to_first_token: float = 0.0
    total_time: float = 0.0
    time_per_token: float = 0.0
    tokens_per_second: float = 0.0
    draft: DraftReport | None = None

    def as_dict(self) -> dict[str, object]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "draft"}
        report = self.draft or DraftReport()
        lookup = report.lookup
        out.update(num_speculations=report.num_speculations, draft_length=report.draft_length,
                   draft_vocab=report.draft_vocab, draft_adapter=report.draft_adapter,
                   lookup_rounds=lookup and lookup.rounds, lookup_drafted_tokens=lookup and lookup.drafted_tokens,
                   lookup_accepted_tokens=lookup and lookup.accepted_tokens,
                   plain_rounds=report.plain_rounds, probes=report.probes)
        return out

    def add_exits(self, exits: Sequence[int]) -> None:
        """Mean and histogram of per-token exit layers (dynamic exits)."""
        if exits:
            self.mean_exit_layer = sum(exits) / len(exits)
            self.exit_layer_histogram = {layer: exits.count(layer) for layer in sorted(set(exits))}


@dataclass
class GenerationResult:
    token_ids: list[int]
    stats: GenerationStats


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stop_index(tokens: list[int], stop_ids: frozenset[int]) -> int | None:
    for i, tok in enumerate(tokens):
        if tok in stop_ids:
            return i
    return None


@torch.inference_mode()
def generate_batch(model: LlamaForCausalLM, prompts: Sequence[Sequence[int]] | torch.Tensor, max_steps: int) -> torch.Tensor:
    """Greedy autoregressive continuations of a batch of prompts (any lengths) -> ``[batch, max_steps]``
    token ids (on the CPU).

    The batch path of the engine: the prompts are left-padded to one length and share one static KV
    cache whose per-row padding (``KVCache.pad``) gives each row its own positions and hides its
    padding; the tokens stay on the device (no host sync per step). There are no stop conditions
    (each row gets ``max_steps`` tokens). Row i equals ``generate`` greedy on ``prompts[i]`` without
    stop tokens.
    """
    rows = prompts.tolist() if isinstance(prompts, torch.Tensor) else [list(p) for p in prompts]
    if not rows or not all(rows):
        raise LayerskipError("generate_batch needs at least one prompt and no empty prompt")
    batch, length = len(rows), max(len(r) for r in rows)
    check_fits(model, length, max_steps, batch_size=batch)
    pad = torch.tensor([length - len(r) for r in rows])
    ids = torch.tensor([[0] * (length - len(r)) + r for r in rows], device=model.device)
    cache = KVCache(model.config, batch, length + max_steps, model.device, model.attention_dtype, pad)
    hidden = model.run_layers(model.embed(ids), 0, model.num_layers, cache, 0)
    token = model.unembed(hidden[:, -1:]).argmax(-1)  # [batch, 1]
    out = [token]
    for i in range(max_steps - 1):
        hidden = model.run_layers(model.embed(token), 0, model.num_layers, cache, length + i)
        token = model.unembed(hidden).argmax(-1)
        out.append(token)
    return torch.cat(out, dim=1).cpu()


@torch.inference_mode()
def generate(
    model: LlamaForCausalLM,
    prompt_ids: Sequence[int],
    config: GenerationConfig,
    decoding: Decoding = AUTOREGRESSIVE,
    on_tokens: TokenCallback | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> GenerationResult:
    """Generate up to ``config.max_steps`` tokens after ``prompt_ids`` (batch 1) with ``decoding``.

    ``on_tokens``: called after every round with its new tokens.
    ``decode``: token ids -> text, needed only for ``stop_words``.
    """
    if not prompt_ids:
        raise LayerskipError("the prompt is empty (no token ids)")
    drafter, exit_criterion = decoding.drafter, decoding.criterion
    depth = model.num_layers if decoding.depth is None else decoding.depth
    if not 1 <= depth <= model.num_layers:
        raise LayerskipError(f"early-exit depth {depth} outside 1..{model.num_layers}")
    if config.stop_words and decode is None:
        raise LayerskipError("`stop_words` need a decode function (token ids -> text)")
    device = model.device
    generator = None
    if config.sampling.sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if config.seed is None else config.seed)
    max_draft = drafter.max_tokens if drafter else 0
    check_fits(model, len(prompt_ids), config.max_steps, max_draft + 1)
    cache = KVCache(model.config, 1, len(prompt_ids) + config.max_steps + max_draft + 1, device, model.attention_dtype)
    stop_ids = frozenset(config.stop_token_ids)
    stats = GenerationStats()
    if drafter is not None:
        drafter.bind(model)
        drafter.reset()
    elif depth < model.num_layers:
        stats.exit_layer = depth
    exits: list[int] = []

    _synchronize(device)
    start_time = time.perf_counter()
    prompt = torch.tensor([list(prompt_ids)], device=device)
    hidden = model.run_layers(model.embed(prompt), 0, depth, cache, 0)
    logits = model.unembed(hidden[:, -1:])[:, -1].float()
    if not torch.isfinite(logits).all():  # once per generation: a damaged checkpoint is non-finite everywhere
        raise LayerskipError("the model's logits on the prompt are not finite (NaN or inf): its weights are damaged, "
                             "or its activations overflow this dtype (try `dtype` float32)")
    logits = process_logits(logits, config.sampling, [list(prompt_ids)])
    first, _ = select(logits, config.sampling, generator)
    generated = [int(first[0])]
    _synchronize(device)
    stats.time_to_first_token = time.perf_counter() - start_time
    if on_tokens:
        on_tokens(list(generated), 0)

    state = DecodeState(model, cache, list(prompt_ids) + generated, len(prompt_ids), config.sampling, generator, stop_ids)
    stopped = generated[0] in stop_ids
    if stopped:
        stats.stop_reason = "stop_token"
    watcher = StopWords(config.stop_words, decode) if config.stop_words and decode is not None else None
    if not stopped and watcher is not None and watcher.push(generated):
        stats.stop_reason, stopped = "stop_word", True

    while not stopped and len(generated) < config.max_steps:
        remaining = config.max_steps - len(generated)
        draft = drafter.propose(state, remaining - 1) if drafter else Draft()
        if exit_criterion is not None:
            logits, exit_layer = dynamic_exit_logits(model, state.pending, cache, state.slot, exit_criterion, depth)
            exits.append(exit_layer)
            choice, _ = select(process_logits(logits.view(1, -1), config.sampling, [state.history]), config.sampling, generator)
            verdict = Verdict([int(choice[0])], 0)
        else:
            verdict = verify(state, draft, depth)
        stats.draft_forwards += draft.forwards
        stats.verify_forwards += 1
        stats.draft_rounds += len(draft) > 0
        stats.drafted_tokens += len(draft)
        stats.accepted_tokens += verdict.accepted
        if drafter:
            drafter.update(len(draft), verdict.accepted)

        new = verdict.tokens[:remaining]
        cut = _stop_index(new, stop_ids)
        if cut is not None:
            new, stopped, stats.stop_reason = new[: cut + 1], True, "stop_token"
        before = len(generated)
        generated.extend(new)
        if watcher is not None:
            keep = watcher.push(generated[before:])
            if keep is not None:
                del generated[before + keep :]
                stopped, stats.stop_reason = True, "stop_word"
        # The pending token is the last new one; every slot before it now holds verified K/V.
        state.slot += len(generated) - before
        state.history.extend(generated[before:])
        if on_tokens and len(generated) > before:
            on_tokens(generated[before:], min(verdict.accepted, len(generated) - before))

    _synchronize(device)
    stats.total_time = time.perf_counter() - start_time
    stats.generated_tokens = len(generated)
    if stats.drafted_tokens:
        stats.acceptance_rate = stats.accepted_tokens / stats.drafted_tokens
    if stats.verify_forwards:
        stats.mean_tokens_per_verification = (len(generated) - 1) / stats.verify_forwards
    if drafter is not None:
        report = stats.draft = drafter.report()
        stats.exit_layer = report.exit_layer
        exits = list(report.exit_layers)
    stats.add_exits(exits)
    stats.time_per_token = stats.total_time / len(generated)
    stats.tokens_per_second = len(generated) / stats.total_time if stats.total_time > 0 else 0.0
    return GenerationResult(generated, stats)
