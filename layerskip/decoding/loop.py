"""Generating from Python: one sequence (``generate``, a batch of one; ``generate_steps`` round by
round) or many together (``generate_many``), all on the one decoding loop
(``layerskip.decoding.engine.Engine``)."""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

from layerskip.decoding.engine import Engine, StepOutput
from layerskip.decoding.results import BatchSummary, GenerationResult
from layerskip.decoding.settings import AUTOREGRESSIVE, Decoding, GenerationConfig
from layerskip.errors import LayerskipError
from layerskip.model.decoder import LlamaForCausalLM

#: called with the new tokens of a round and how many of them were accepted drafts
TokenCallback = Callable[[list[int], int], None]


def generate_steps(
    model: LlamaForCausalLM,
    prompt_ids: Sequence[int],
    config: GenerationConfig,
    decoding: Decoding = AUTOREGRESSIVE,
    decode: Callable[[list[int]], str] | None = None,
) -> Iterator[StepOutput]:
    """Decode ``prompt_ids`` (a batch of one) in the caller's thread, yielding each round's ``StepOutput``
    (its new tokens); the last one is ``finished`` and carries the result.

    ``decode``: token ids -> text, needed only for ``stop_words``.
    """
    engine = Engine(model, decoding, max_rows=1, max_length=max(len(prompt_ids), 1) + config.max_steps)
    engine.add_request(prompt_ids, config, decode)
    while True:
        for output in engine.step():
            yield output
            if output.finished:
                return


def generate(
    model: LlamaForCausalLM,
    prompt_ids: Sequence[int],
    config: GenerationConfig,
    decoding: Decoding = AUTOREGRESSIVE,
    on_tokens: TokenCallback | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> GenerationResult:
    """Generate up to ``config.max_steps`` tokens after ``prompt_ids`` with ``decoding`` (a batch of one).

    ``on_tokens``: called after every round with its new tokens.
    ``decode``: token ids -> text, needed only for ``stop_words``.
    """
    for output in generate_steps(model, prompt_ids, config, decoding, decode):
        if on_tokens and output.token_ids:
            on_tokens(output.token_ids, output.accepted)
        if output.finished:
            assert output.result is not None
            return output.result
    raise AssertionError("the engine ended a request without finishing it")


def generate_many(
    model: LlamaForCausalLM,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig | Sequence[GenerationConfig],
    decoding: Decoding = AUTOREGRESSIVE,
    batch_size: int | None = None,
    decode: Callable[[list[int]], str] | None = None,
    batch_control: bool = True,
) -> tuple[list[GenerationResult], BatchSummary]:
    """Generate after every prompt, ``batch_size`` rows at a time (all of them by default; rows join as
    others finish): one result per prompt, in order, and the batch's summary (aggregate tokens/s over
    the wall time). ``config``: one for all prompts or one per prompt. ``batch_control``: see ``Engine``
    (with it, which rounds draft follows measured time: sampled rows keep their distribution but not
    their batch-1 draws)."""
    configs = [config] * len(prompts) if isinstance(config, GenerationConfig) else list(config)
    if not prompts or len(configs) != len(prompts):
        raise LayerskipError("generate_many needs at least one prompt and one config per prompt")
    rows = len(prompts) if batch_size is None else batch_size
    longest = max(len(p) + c.max_steps for p, c in zip(prompts, configs))
    engine = Engine(model, decoding, max_rows=min(rows, len(prompts)), max_length=longest, batch_control=batch_control)
    ids = [engine.add_request(p, c, decode) for p, c in zip(prompts, configs)]
    results: dict[int, GenerationResult] = {}
    start = time.perf_counter()
    while engine.unfinished:
        for output in engine.step():
            if output.finished:
                assert output.result is not None
                results[output.request_id] = output.result
    seconds = time.perf_counter() - start
    ordered = [results[i] for i in ids]
    return ordered, BatchSummary.of([r.stats for r in ordered], seconds)
