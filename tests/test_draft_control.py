"""The payoff controller (layerskip.drafters.controller): it stops drafting for a sequence whose drafting
rounds emit tokens more slowly than plain steps, probes with backing-off intervals, keeps drafting where it
pays (refreshing the plain rate now and then), never measures a catch-up round, and leaves the output
unchanged."""

from __future__ import annotations

import pytest

from layerskip.decoding.settings import GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.strategy import Strategy
from layerskip.decoding.types import Draft
from layerskip.drafters import controller as control
from layerskip.drafters.base import Drafter
from layerskip.drafters.config import DraftConfig, build_drafter
from layerskip.errors import LayerskipError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FixedDrafter(Drafter):
    max_tokens = 3

    def __init__(self) -> None:
        self.proposed = self.updates = 0

    def propose(self, batch, limits, states) -> Draft:
        self.proposed += 1
        return Draft(tokens=[[7, 7, 7]], probs=[None])


class OneRow:
    """A batch of one row, as far as the controller looks (its length)."""

    def __len__(self) -> int:
        return 1


def drive(rounds: int, accepted: int, draft_seconds: float, plain_seconds: float = 1.0,
          catch_up_seconds: float = 0.0) -> tuple[control.PayoffController, control.PayoffState, list[bool]]:
    """Run ``rounds`` rounds: a drafting round takes ``draft_seconds`` (plus ``catch_up_seconds`` after a
    plain round) and gets ``accepted`` of 3 drafts accepted; a plain round takes ``plain_seconds``."""
    clock, inner = Clock(), FixedDrafter()
    ctl = control.PayoffController(inner, clock)
    state = ctl.new_state()
    kinds: list[bool] = []
    previous_plain = True
    for _ in range(rounds):
        draft = ctl.propose(OneRow(), [100], [state])
        drafted = len(draft.tokens[0]) > 0
        kinds.append(drafted)
        clock.now += (draft_seconds + (catch_up_seconds if previous_plain else 0.0)) if drafted else plain_seconds
        ctl.update(state, len(draft.tokens[0]), accepted if drafted else 0)
        previous_plain = not drafted
    return ctl, state, kinds


def test_a_draft_that_does_not_pay_is_stopped_and_probed_ever_more_rarely() -> None:
    ctl, state, kinds = drive(400, accepted=0, draft_seconds=1.5)
    assert state.paused and not any(kinds[40:60])  # stopped
    assert sum(kinds) < 0.1 * len(kinds)  # nearly all rounds plain
    starts = [i for i in range(1, len(kinds)) if kinds[i] and not kinds[i - 1]]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps == sorted(gaps) and gaps[-1] >= control.MAX_PROBE  # probes back off, up to MAX_PROBE
    assert ctl.report(state).plain_rounds == len(kinds) - sum(kinds) and ctl.report(state).probes == len(starts) - 1


def test_a_draft_that_pays_keeps_drafting_with_a_plain_round_now_and_then() -> None:
    ctl, state, kinds = drive(200, accepted=3, draft_seconds=1.5)
    assert not state.paused
    plain = [i for i, k in enumerate(kinds) if not k]
    assert plain[0] == control.FIRST_PLAIN + 1  # one unmeasured first round, FIRST_PLAIN measured, then plain
    assert len(plain) <= 2 + len(kinds) // control.REFRESH


def test_the_catch_up_round_after_plain_steps_is_not_held_against_the_draft() -> None:
    """A draft that pays in steady state but whose first round after plain steps is slow (an adapter
    catching up) is not paused by that round."""
    ctl, state, kinds = drive(200, accepted=3, draft_seconds=1.5, catch_up_seconds=20.0)
    assert not state.paused and sum(kinds) > 0.9 * len(kinds)


def test_a_sequence_that_starts_paying_resumes_drafting() -> None:
    clock, inner = Clock(), FixedDrafter()
    ctl = control.PayoffController(inner, clock)
    state = ctl.new_state()
    for round_ in range(300):
        drafted = len(ctl.propose(OneRow(), [100], [state]).tokens[0])
        pays = round_ >= 100
        clock.now += (1.5 if drafted else 1.0)
        ctl.update(state, drafted, (3 if pays else 0) if drafted else 0)
        if round_ == 99:
            assert state.paused
    assert not state.paused


def test_the_controlled_output_is_the_autoregressive_output(tiny_model) -> None:
    greedy = GenerationConfig(max_steps=40, sampling=SamplingConfig(sample=False))
    prompt = [0, 5, 6, 7, 8, 9, 5, 6, 7]
    expected = generate(tiny_model, prompt, greedy).token_ids
    spec = Strategy.parse("self_speculative:exit_layer=2,num_speculations=3,draft_control=payoff")
    got = generate(tiny_model, prompt, greedy, spec.decoding(tiny_model.num_layers))
    assert got.token_ids == expected and got.stats.draft.plain_rounds is not None
    assert got.stats.as_dict()["plain_rounds"] == got.stats.draft.plain_rounds
    assert isinstance(build_drafter(DraftConfig(2, 3, draft_control="payoff"), 4), control.PayoffController)


def test_draft_control_is_checked() -> None:
    with pytest.raises(LayerskipError, match="`draft_control` must be one of none, payoff"):
        Strategy("layerskip", "self_speculative", DraftConfig(2, 3, draft_control="always")).validate(4)
    with pytest.raises(LayerskipError, match="controls drafting"):
        Strategy("layerskip", "autoregressive", DraftConfig(draft_control="payoff")).validate(4)


def test_batch_rounds_stop_drafting_per_row_count_where_it_does_not_pay() -> None:
    """Rounds of 4 rows where a drafting round takes 3 s for 8 tokens and a plain one 1 s for 4 stop
    drafting; rounds of 2 rows where drafting emits 8 tokens in 1.5 s keep drafting."""
    clock = Clock()
    batch = control.BatchPayoff(clock)
    kinds: dict[int, list[bool]] = {2: [], 4: []}
    for round_ in range(300):
        rows = 4 if round_ % 2 else 2
        drafts = batch.start_round(rows)
        kinds[rows].append(drafts)
        clock.now += (3.0 if rows == 4 else 1.5) if drafts else 1.0
        batch.finish_round(8 if drafts else rows)
        clock.now += 0.25  # another row count's round in between is not booked to this one
    assert batch.states[4].paused and sum(kinds[4]) < 0.15 * len(kinds[4])
    assert not batch.states[2].paused and sum(kinds[2]) > 0.9 * len(kinds[2])


def test_batched_engine_output_is_unchanged_by_batch_control(tiny_model) -> None:
    from layerskip.decoding.engine import Engine
    from layerskip.decoding.loop import generate_many

    greedy = GenerationConfig(max_steps=30, sampling=SamplingConfig(sample=False))
    prompts = [[0, 5, 6, 7, 8, 9, 5, 6, 7], [0, 17, 42], [0, 7, 7, 7, 7]]
    expected = [generate(tiny_model, p, greedy).token_ids for p in prompts]
    spec = Strategy.parse("self_speculative:exit_layer=2,num_speculations=3")
    results, _ = generate_many(tiny_model, prompts, greedy, spec.decoding(tiny_model.num_layers))
    assert [r.token_ids for r in results] == expected
    assert Engine(tiny_model, spec.decoding(4), max_rows=3).batch_control is not None
    assert Engine(tiny_model, spec.decoding(4), max_rows=3, batch_control=False).batch_control is None
