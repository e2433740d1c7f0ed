"""The decoding loop: a step-level engine over a batch of rows with continuous batching.

One ``Engine`` holds the model, what it decodes with (``Decoding``) and one KV cache of ``max_rows``
rows. ``add_request(prompt_ids, config)`` queues a sequence; each ``step()``

1. prefills (part of) the next waiting prompt into a free row, at most ``prefill_chunk`` tokens a step,
   so a long prompt joins without stalling the running rows for more than about one round (without
   ``prefill_chunk``, every waiting prompt that finds a free row, whole); its first token comes with
   the step that finishes its prefill;
2. runs one round for every running row: the drafter proposes per row (``Drafter.propose``), one
   verification over the batch accepts per row (``layerskip.decoding.verification``), and each row
   advances by what it accepted, so rows sit at different slots (the cache's per-row starts);
3. ends the rows that met a stop token, a stop word or their ``max_steps``; a finished row leaves the
   batch (the last running row moves into its cache row: running rows are always the first ones).

Autoregressive decoding is the loop with no drafter (each round verifies just the pending token);
self-speculative decoding is the same loop with a drafter. With ``depth`` below the model's layer
count and no drafter, it is early-exit inference; with a criterion, dynamic early exit.
``generate`` (``layerskip.decoding.loop``) is a batch of one on it, ``generate_many`` a batch of many,
and a server steps it while requests come and go (vLLM's engine shape: add_request / step / abort).
"""

from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from layerskip.decoding.dynamic_exit import walk_layers
from layerskip.decoding.exit_criteria import ExitCriterion
from layerskip.decoding.limits import check_fits
from layerskip.decoding.results import GenerationResult, GenerationStats
from layerskip.decoding.sampling import process_logits, select
from layerskip.decoding.settings import AUTOREGRESSIVE, Decoding, GenerationConfig
from layerskip.decoding.stop_words import StopWords
from layerskip.decoding.types import DecodeBatch, Draft, Row, Verdict
from layerskip.decoding.verification import verify
from layerskip.drafters.controller import BatchPayoff
from layerskip.errors import LayerskipError
from layerskip.model.cache import KVCache
from layerskip.model.decoder import LlamaForCausalLM


@dataclass(frozen=True)
class StepOutput:
    """What one step did for one request: its new tokens (``accepted`` of them were drafts), whether it
    finished, and then its result."""

    request_id: int
    token_ids: list[int]
    accepted: int
    finished: bool
    result: GenerationResult | None = None


@dataclass
class _Request:
    id: int
    prompt: list[int]
    config: GenerationConfig
    added: float
    watcher: StopWords | None
    generator: torch.Generator | None
    criterion: ExitCriterion | None
    row: Row | None = None
    prefilled: int = 0
    generated: list[int] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Engine:
    """Decode many sequences together (module docstring).

    ``max_rows``: rows decoded at once (the cache's batch size). ``max_length``: the most positions a
    request may use, prompt and generated tokens together (each row's cache holds that plus a draft's
    overshoot). ``prefill_chunk``: the most prompt tokens prefilled per step (None: a whole prompt at once).
    ``batch_control``: a round of two or more rows drafts only while drafting rounds of that many rows
    emit tokens faster than plain ones (``layerskip.drafters.controller.BatchPayoff``; the output is the
    same either way).
    """

    def __init__(self, model: LlamaForCausalLM, decoding: Decoding = AUTOREGRESSIVE, max_rows: int = 1,
                 max_length: int | None = None, prefill_chunk: int | None = None, batch_control: bool = True) -> None:
        self.model, self.decoding = model, decoding
        self.depth = model.num_layers if decoding.depth is None else decoding.depth
        if not 1 <= self.depth <= model.num_layers:
            raise LayerskipError(f"early-exit depth {self.depth} outside 1..{model.num_layers}")
        if max_rows < 1:
            raise LayerskipError(f"`max_rows` must be >= 1, got {max_rows}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise LayerskipError(f"`prefill_chunk` must be >= 1, got {prefill_chunk}")
        self.max_rows, self.prefill_chunk = max_rows, prefill_chunk
        self.max_length = model.config.context_limit if max_length is None else max_length
        self.drafter = decoding.drafter
        self.max_draft = self.drafter.max_tokens if self.drafter else 0
        if self.drafter is not None:
            self.drafter.bind(model)
        #: rounds of several rows draft only while that pays for that many rows (``BatchPayoff``)
        self.batch_control = BatchPayoff() if batch_control and self.drafter is not None and max_rows > 1 else None
        self._cache: KVCache | None = None
        self._waiting: deque[_Request] = deque()
        self._prefilling: _Request | None = None
        self._running: list[_Request] = []
        self._next_id = 0

    # requests ---------------------------------------------------------------------------------------

    def add_request(self, prompt_ids: Sequence[int], config: GenerationConfig,
                    decode: Callable[[list[int]], str] | None = None) -> int:
        """Queue a sequence; returns its id. ``decode`` (token ids -> text) is needed for ``stop_words``."""
        prompt = list(prompt_ids)
        if not prompt:
            raise LayerskipError("the prompt is empty (no token ids)")
        if config.stop_words and decode is None:
            raise LayerskipError("`stop_words` need a decode function (token ids -> text)")
        check_fits(self.model, len(prompt), config.max_steps, self.max_draft + 1, batch_size=self.max_rows)
        if len(prompt) + config.max_steps > self.max_length:
            raise LayerskipError(f"the prompt ({len(prompt)} tokens) + `max_steps` {config.max_steps} exceed the engine's "
                                 f"`max_length` {self.max_length}")
        generator = None
        if config.sampling.sample:
            generator = torch.Generator(device=self.model.device)
            generator.manual_seed(0 if config.seed is None else config.seed)
        watcher = StopWords(config.stop_words, decode) if config.stop_words and decode is not None else None
        criterion = copy.deepcopy(self.decoding.criterion)
        request = _Request(self._next_id, prompt, config, time.perf_counter(), watcher, generator, criterion)
        if self.drafter is None and self.depth < self.model.num_layers:
            request.stats.exit_layer = self.depth
        self._next_id += 1
        self._waiting.append(request)
        return request.id

    @torch.inference_mode()
    def abort(self, request_id: int) -> bool:
        """Drop a request wherever it is (its row is free for the next step); whether it was there."""
        for request in self._waiting:
            if request.id == request_id:
                self._waiting.remove(request)
                return True
        if self._prefilling is not None and self._prefilling.id == request_id:
            self._prefilling = None
            return True
        for index, request in enumerate(self._running):
            if request.id == request_id:
                self._leave(index)
                return True
        return False

    @property
    def unfinished(self) -> int:
        """Requests waiting, prefilling or running."""
        return len(self._waiting) + (self._prefilling is not None) + len(self._running)

    @property
    def running(self) -> int:
        """Rows decoding now."""
        return len(self._running)

    # the loop ---------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """One prefill chunk (if a prompt waits and a row is free; without ``prefill_chunk``, every waiting
        prompt a free row takes) and one round for the running rows."""
        outputs: list[StepOutput] = []
        self._prefill(outputs)
        # whole prompts (no chunking: offline batches) join all at once while rows are free
        while self.prefill_chunk is None and self._waiting and len(self._running) < self.max_rows:
            self._prefill(outputs)
        if self._running:
            self._round(outputs)
        return outputs

    @property
    def cache(self) -> KVCache:
        if self._cache is None:
            self._cache = KVCache(self.model.config, self.max_rows, self.max_length + self.max_draft + 1,
                                  self.model.device, self.model.attention_dtype)
        return self._cache

    def _prefill(self, outputs: list[StepOutput]) -> None:
        request = self._prefilling
        if request is None:
            if not self._waiting or len(self._running) >= self.max_rows:
                return
            request = self._prefilling = self._waiting.popleft()
        model, prompt = self.model, request.prompt
        # a prompt fills the last row and moves into the first free one when done (the free rows are the last)
        cache = self.cache.narrow(self.max_rows - 1, 1)
        end = len(prompt) if self.prefill_chunk is None else min(len(prompt), request.prefilled + self.prefill_chunk)
        ids = torch.tensor([prompt[request.prefilled : end]], device=model.device)
        hidden = model.run_layers(model.embed(ids), 0, self.depth, cache, request.prefilled)
        request.prefilled = end
        if end < len(prompt):
            return
        self._prefilling = None
        logits = model.unembed(hidden[:, -1:])[:, -1].float()
        if not torch.isfinite(logits).all():  # once per request: a damaged checkpoint is non-finite everywhere
            raise LayerskipError("the model's logits on the prompt are not finite (NaN or inf): its weights are damaged, "
                                 "or its activations overflow this dtype (try `dtype` float32)")
        config = request.config
        first, _ = select(process_logits(logits, config.sampling, [prompt]), config.sampling, request.generator)
        token = int(first[0])
        _synchronize(model.device)
        request.stats.time_to_first_token = time.perf_counter() - request.added
        draft_state = self.drafter.new_state() if self.drafter else None
        request.row = Row(prompt + [token], len(prompt), config.sampling, request.generator,
                          frozenset(config.stop_token_ids), draft_state)
        request.generated = [token]
        _, reason = self._cut(request, [token])
        if reason is None and config.max_steps <= 1:
            reason = "max_steps"
        if reason is not None:
            outputs.append(self._finish(request, [token], 0, reason))
            return
        target = len(self._running)
        self._move_row(self.max_rows - 1, target, len(prompt))
        self._running.append(request)
        outputs.append(StepOutput(request.id, [token], 0, False))

    def _round(self, outputs: list[StepOutput]) -> None:
        model, running = self.model, self._running
        rows = [request.row for request in running]
        assert all(row is not None for row in rows)
        batch = DecodeBatch(model, self.cache.narrow(0, len(rows)), rows)  # type: ignore[arg-type]
        remaining = [r.config.max_steps - len(r.generated) for r in running]
        draft = Draft.empty(len(rows))
        control = self.batch_control if len(rows) > 1 else None
        if self.decoding.criterion is not None:
            verdicts = self._dynamic_exit(batch, running)
        else:
            if self.drafter is not None and (control is None or control.start_round(len(rows))):
                draft = self.drafter.propose(batch, [left - 1 for left in remaining], [row.draft for row in batch.rows])
            verdicts = verify(batch, draft, self.depth)
        finished: list[int] = []
        emitted = 0
        for index, (request, verdict, tokens, left) in enumerate(zip(running, verdicts, draft.tokens, remaining)):
            row, stats = request.row, request.stats
            assert row is not None
            stats.draft_forwards += draft.forwards
            stats.verify_forwards += 1
            stats.draft_rounds += len(tokens) > 0
            stats.drafted_tokens += len(tokens)
            stats.accepted_tokens += verdict.accepted
            if self.drafter is not None:
                self.drafter.update(row.draft, len(tokens), verdict.accepted)
            new, reason = self._cut(request, verdict.tokens[:left])
            request.generated.extend(new)
            emitted += len(new)
            # the pending token is the last new one; every slot before it now holds verified K/V
            row.slot += len(new)
            row.history.extend(new)
            if reason is None and len(request.generated) >= request.config.max_steps:
                reason = "max_steps"
            accepted = min(verdict.accepted, len(new))
            if reason is None:
                outputs.append(StepOutput(request.id, new, accepted, False))
            else:
                outputs.append(self._finish(request, new, accepted, reason))
                finished.append(index)
        if control is not None:
            control.finish_round(emitted)
        for index in reversed(finished):
            self._leave(index)

    def _dynamic_exit(self, batch: DecodeBatch, running: list[_Request]) -> list[Verdict]:
        """Autoregressive dynamic early exit: each row's pending token leaves at the first layer its
        criterion accepts (``layerskip.decoding.dynamic_exit``); one token per row."""
        ids = torch.tensor([[row.pending] for row in batch.rows], device=self.model.device)
        criteria = [request.criterion for request in running]
        walk = walk_layers(self.model, ids, batch.cache, batch.starts(), self.depth, criteria)  # type: ignore[arg-type]
        verdicts = []
        for b, (request, row) in enumerate(zip(running, batch.rows)):
            request.exits.append(walk.exit_layers[b])
            choice, _ = select(process_logits(walk.logits[b : b + 1], row.sampling, [row.history]), row.sampling,
                               row.generator)
            verdicts.append(Verdict([int(choice[0])], 0))
        return verdicts

    @staticmethod
    def _cut(request: _Request, new: list[int]) -> tuple[list[int], str | None]:
        """The ``new`` tokens a request keeps and why it stops, if it does: through its first stop token,
        or through the token that completes a stop word."""
        assert request.row is not None, "a request's row exists from its first token on"
        stops = request.row.stop_token_ids
        reason = None
        cut = next((i for i, token in enumerate(new) if token in stops), None)
        if cut is not None:
            new, reason = new[: cut + 1], "stop_token"
        if request.watcher is not None:
            keep = request.watcher.push(new)
            if keep is not None:
                new, reason = new[:keep], "stop_word"
        return new, reason

    def _finish(self, request: _Request, new: list[int], accepted: int, reason: str) -> StepOutput:
        _synchronize(self.model.device)
        stats, generated = request.stats, request.generated
        stats.stop_reason = reason
        stats.total_time = time.perf_counter() - request.added
        stats.generated_tokens = len(generated)
        if stats.drafted_tokens:
            stats.acceptance_rate = stats.accepted_tokens / stats.drafted_tokens
        if stats.verify_forwards:
            stats.mean_tokens_per_verification = (len(generated) - 1) / stats.verify_forwards
        exits = request.exits
        if self.drafter is not None and request.row is not None:
            report = stats.draft = self.drafter.report(request.row.draft)
            stats.exit_layer = report.exit_layer
            exits = list(report.exit_layers)
        stats.add_exits(exits)
        stats.time_per_token = stats.total_time / len(generated)
        stats.tokens_per_second = len(generated) / stats.total_time if stats.total_time > 0 else 0.0
        return StepOutput(request.id, new, accepted, True, GenerationResult(list(generated), stats))

    def _leave(self, index: int) -> None:
        """Row ``index`` leaves; the last running row takes its place."""
        last = len(self._running) - 1
        if index != last:
            mover = self._running[last]
            assert mover.row is not None
            self._move_row(last, index, mover.row.slot)
            self._running[index] = mover
        self._running.pop()

    def _move_row(self, source: int, target: int, length: int) -> None:
        """Copy slots ``0..length-1`` of a row into another, in the model's cache and the drafter's."""
        if source == target:
            return
        cache = self.cache
        for each in [cache, *(self.drafter.row_caches(cache) if self.drafter else [])]:
            each.move_row(source, target, length)
