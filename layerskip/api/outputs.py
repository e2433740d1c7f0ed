"""What a request returns (vLLM's ``RequestOutput`` / ``CompletionOutput`` shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CompletionOutput:
    """One completion: its ``text`` and ``token_ids``, why it ended (``finish_reason``: ``stop`` at an
    end-of-sequence token or stop string, ``length`` at ``max_tokens``; ``stop_reason``: the stop string or
    token id that ended it), and the generation's ``metrics`` (tokens/s, acceptance, tokens per
    verification, ... and vLLM's speculative counters ``num_drafts``, ``num_draft_tokens``,
    ``num_accepted_tokens``, ``mean_acceptance_length``)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: str | int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestOutput:
    """One prompt's result: the prompt, its token ids, and its completions (one)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True
