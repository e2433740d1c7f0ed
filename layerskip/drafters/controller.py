"""A per-sequence controller that stops drafting where it does not pay (``draft_control="payoff"``).

A draft pays for a sequence when its rounds emit tokens faster than plain one-token steps would. That
depends on the text (how much of it the draft predicts) and on the machine (what a draft token costs
next to a full step), so the controller measures both, per sequence, on the wall clock: a round lasts
from one ``propose`` to the next (the draft, the verification, the loop's bookkeeping) and emits
``accepted + 1`` tokens. It keeps a running rate (tokens over seconds, older rounds decayed by ``DECAY``)
for drafting rounds and for plain rounds (no draft: exactly an autoregressive step).

- The first drafting round after plain ones is not measured: a drafter with state of its own (the draft
  adapter's cache) catches up there on the tokens it did not see, a cost paid once, not per round.
- It starts drafting; after ``FIRST_PLAIN`` measured drafting rounds it takes one plain round to learn the
  plain rate, and another every ``REFRESH`` drafting rounds (the plain rate falls as the context grows).
- When the drafting rate falls below the plain rate it stops drafting and probes: after ``probe`` plain
  rounds, two drafting rounds (the first catches up, the second is measured); drafting resumes if the
  measured one beats the plain rate, else ``probe`` doubles (up to ``MAX_PROBE``).

So a sequence the draft cannot predict runs at plain-step speed plus two drafting rounds every up to
``MAX_PROBE`` rounds, and one it predicts well pays one plain round in ``REFRESH``. The output is unchanged
either way: every token is still the verifier's (a round without a draft is an ordinary autoregressive
step). Decisions follow measured time, so two runs may draft in different rounds; the tokens are the same.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Sequence

from layerskip.decoding.types import DecodeBatch, Draft, DraftReport
from layerskip.drafters.base import Drafter
from layerskip.model.cache import KVCache
from layerskip.model.decoder import LlamaForCausalLM

DECAY = 0.75
FIRST_PLAIN = 2
REFRESH = 24
MIN_PROBE, MAX_PROBE = 4, 64
#: drafting must beat the plain rate by this factor to continue (hysteresis against timing noise)
MARGIN = 1.0


class Rate:
    """Tokens over seconds of recent rounds of one kind, older rounds decayed."""

    def __init__(self) -> None:
        self.tokens = self.seconds = 0.0
        self.rounds = 0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens = DECAY * self.tokens + tokens
        self.seconds = DECAY * self.seconds + seconds
        self.rounds += 1

    @property
    def value(self) -> float | None:
        return self.tokens / self.seconds if self.rounds and self.seconds > 0 else None


class PayoffState:
    """One sequence's controller: its rates, whether it is paused or probing, its counts, and the inner
    drafter's state for it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.drafting, self.plain = Rate(), Rate()
        self.paused, self.probing = False, False
        self.probe, self.waited, self.since_plain = MIN_PROBE, 0, 0
        self.plain_rounds = self.probes = 0
        self.started: float | None = None
        self.opened = False  # a round was planned before
        self.drafts = self.measured = False  # what the round under way (or the last one) does
        self.tokens = 0

    def account(self, now: float) -> None:
        """Book the round that ends now, then decide on pausing or resuming after a measured draft."""
        if self.started is None or not self.measured:
            return
        seconds = now - self.started
        if not self.drafts:
            self.plain.add(self.tokens, seconds)
            return
        if self.probing:  # the probe's measured round alone decides
            self.probing = False
            plain = self.plain.value
            if plain is not None and self.tokens / max(seconds, 1e-9) >= plain * MARGIN:
                self.paused, self.probe = False, MIN_PROBE
                self.drafting = Rate()
                self.drafting.add(self.tokens, seconds)
            else:
                self.probe, self.waited = min(2 * self.probe, MAX_PROBE), 0
            return
        self.drafting.add(self.tokens, seconds)
        plain, drafting = self.plain.value, self.drafting.value
        if plain is not None and drafting is not None and drafting < plain * MARGIN:
            self.paused, self.waited = True, 0

    def plan(self) -> tuple[bool, bool]:
        """(draft this round, measure it)."""
        after_plain = not self.opened or not self.drafts
        if self.paused:
            if self.probing:  # the probe's second round: measured
                return True, True
            self.waited += 1
            if self.waited < self.probe:
                return False, True
            self.probing = True
            self.probes += 1
            return True, False  # the probe's first round catches up, unmeasured
        if self.plain.value is None and self.drafting.rounds >= FIRST_PLAIN:
            return False, True
        if self.since_plain >= REFRESH:
            return False, True
        return True, not after_plain

    def start_round(self, now: float) -> bool:
        """Book the last round, plan this one; whether it drafts."""
        self.account(now)
        self.started, self.tokens = now, 0
        self.drafts, self.measured = self.plan()
        self.opened = True
        if not self.drafts:
            self.plain_rounds += 1
            self.since_plain = 0
        else:
            self.since_plain += 1
        return self.drafts


    def finish_round(self, now: float, tokens: int) -> None:
        """Book the round under way as ended now with ``tokens`` emitted (for a caller whose rounds of
        this kind are not back to back: ``BatchPayoff``)."""
        self.tokens = tokens
        self.account(now)
        self.started = None


class BatchPayoff:
    """The payoff rule for rounds of several rows (``layerskip.decoding.engine``): in a batch, one row's
    draft makes the whole round verify ``n+1`` tokens a row, so whether drafting pays is decided per
    round for the batch, per number of rows (a round of B rows drafts while drafting rounds of B rows emit
    tokens faster than plain rounds of B rows, measured on the wall clock with ``PayoffState``'s rule).
    On a CPU with few cores a batch of several rows is compute-bound and verification of ``k+1`` tokens a
    row costs several plain steps (``benchmarks/roofline.py --batch_sizes``): there large batches decode
    plainly, small ones keep drafting."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.states: dict[int, PayoffState] = {}
        self._current: PayoffState | None = None

    def start_round(self, rows: int) -> bool:
        """Whether this round of ``rows`` rows drafts."""
        state = self._current = self.states.setdefault(rows, PayoffState(None))
        return state.start_round(self.clock())

    def finish_round(self, tokens: int) -> None:
        """The round ended, emitting ``tokens`` over all rows."""
        if self._current is not None:
            self._current.finish_round(self.clock(), tokens)
            self._current = None


class PayoffController(Drafter):
    """``inner``'s drafts in the rounds where drafting pays for a sequence, none in the others
    (module docstring); in a batch each row decides for itself, over the round's shared wall time.
    ``clock``: seconds (``time.perf_counter``; tests pass their own)."""

    def __init__(self, inner: Drafter, clock: Callable[[], float] = time.perf_counter) -> None:
        self.inner, self.clock = inner, clock
        self.max_tokens = inner.max_tokens

    def new_state(self) -> PayoffState:
        return PayoffState(self.inner.new_state())

    def bind(self, model: LlamaForCausalLM) -> None:
        self.inner.bind(model)

    def row_caches(self, cache: KVCache) -> list[KVCache]:
        return self.inner.row_caches(cache)

    def propose(self, batch: DecodeBatch, limits: Sequence[int], states: Sequence[PayoffState]) -> Draft:
        now = self.clock()
        drafting = [state.start_round(now) for state in states]
        if not any(drafting):
            return Draft.empty(len(batch))
        return self.inner.propose(batch, [limit if d else 0 for limit, d in zip(limits, drafting)],
                                  [state.inner for state in states])

    def update(self, state: PayoffState, drafted: int, accepted: int) -> None:
        state.tokens = accepted + 1
        if state.drafts:
            self.inner.update(state.inner, drafted, accepted)

    def report(self, state: PayoffState | None = None) -> DraftReport:
        """The inner drafter's report, with the rounds this controller kept plain and its probes."""
        inner = self.inner.report(state.inner if state is not None else None)
        if state is None:
            return inner
        return replace(inner, plain_rounds=state.plain_rounds, probes=state.probes)
