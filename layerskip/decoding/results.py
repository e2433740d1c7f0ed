"""What a generation did: its tokens and its statistics (``GenerationStats``, with vLLM's speculative
counters beside ours), and the sum over a batch of generations (``BatchSummary``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

from layerskip.decoding.types import DraftReport


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

    @property
    def num_drafts(self) -> int:
        """vLLM's name: verifications that checked a draft."""
        return self.draft_rounds

    @property
    def num_draft_tokens(self) -> int:
        """vLLM's name: tokens drafted."""
        return self.drafted_tokens

    @property
    def num_accepted_tokens(self) -> int:
        """vLLM's name: drafted tokens accepted."""
        return self.accepted_tokens

    @property
    def mean_acceptance_length(self) -> float | None:
        """vLLM's mean acceptance length: 1 + accepted / drafts (tokens per verification that checked a draft)."""
        return 1 + self.accepted_tokens / self.draft_rounds if self.draft_rounds else None

    def as_dict(self) -> dict[str, object]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "draft"}
        out.update(num_drafts=self.num_drafts, num_draft_tokens=self.num_draft_tokens,
                   num_accepted_tokens=self.num_accepted_tokens, mean_acceptance_length=self.mean_acceptance_length)
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


@dataclass(frozen=True)
class BatchSummary:
    """The sum over the generations of a batch: tokens, drafting counters (ours and vLLM's names) and
    aggregate throughput over the batch's wall time ``seconds``."""

    sequences: int
    generated_tokens: int
    num_drafts: int
    num_draft_tokens: int
    num_accepted_tokens: int
    verify_forwards: int
    seconds: float

    @classmethod
    def of(cls, stats: Sequence[GenerationStats], seconds: float) -> "BatchSummary":
        return cls(len(stats), sum(s.generated_tokens for s in stats), sum(s.draft_rounds for s in stats),
                   sum(s.drafted_tokens for s in stats), sum(s.accepted_tokens for s in stats),
                   sum(s.verify_forwards for s in stats), seconds)

    @property
    def acceptance_rate(self) -> float | None:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else None

    @property
    def mean_acceptance_length(self) -> float | None:
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else None

    @property
    def tokens_per_second(self) -> float:
        """Aggregate output tokens per second of the batch."""
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(acceptance_rate=self.acceptance_rate, mean_acceptance_length=self.mean_acceptance_length,
                   tokens_per_second=self.tokens_per_second)
        return out
