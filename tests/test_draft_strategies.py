"""Draft strategies beyond a fixed exit: criteria formulas, exactness of every drafter, adaptive
draft length, autoregressive dynamic exit cache validity, and tuning."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from layerskip.model.cache import KVCache
from layerskip.drafters.config import DraftConfig, build_drafter, load_draft_config
from layerskip.drafters.length import ConfidenceThreshold, HeuristicLength
from layerskip.decoding.dynamic_exit import walk_layers
from layerskip.errors import LayerskipError
from layerskip.decoding.exit_criteria import CRITERIA, layer_threshold, make_criterion
from layerskip.decoding.settings import Decoding, GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.kernels.linear import prepare_for_inference
from layerskip.checkpoints.loading import load_model
from layerskip.decoding.sampling import SamplingConfig

from helpers import dampen_layers

GREEDY = SamplingConfig(sample=False)
PROMPT = [0, 17, 42, 99, 7, 150]


def view(layer=2, logits=None, normed=None, layers=8):
    logits = torch.tensor(logits if logits is not None else [0.0, 0.0], dtype=torch.float32)
    return SimpleNamespace(layer=layer, logits=logits, probs=logits.softmax(-1),
                           normed=torch.tensor(normed if normed is not None else [1.0, 0.0]), model=SimpleNamespace(num_layers=layers))


def test_cosine_similarity():
    c = make_criterion("cosine_similarity", threshold=0.9)
    c.start_token(8)
    assert not c.should_exit(view(1, normed=[1.0, 0.0]))  # nothing to compare with yet
    assert not c.should_exit(view(2, normed=[0.0, 1.0]))  # cos 0
    assert c.should_exit(view(3, normed=[0.1, 1.0]))  # cos 0.995


def test_token_repeat_and_alias():
    c = make_criterion("consistent_tokens", patience=2)
    assert c.name == "token_repeat"
    c.start_token(8)
    assert not c.should_exit(view(1, [1.0, 0.0]))
    assert not c.should_exit(view(2, [0.0, 1.0]))
    assert c.should_exit(view(3, [0.0, 2.0]))


def test_max_probability_fixed_and_layer_schedule():
    assert layer_threshold(0, 8) == pytest.approx(0.99)
    r = (8 - 4) / 8
    assert layer_threshold(4, 8) == pytest.approx(0.99 * r**0.75 + 0.75 * (1 - r**0.75))
    fixed = make_criterion("logits_current", threshold=0.7)
    fixed.start_token(8)
    assert fixed.should_exit(view(1, [math.log(0.8), math.log(0.2)]))
    assert not fixed.should_exit(view(1, [math.log(0.6), math.log(0.4)]))
    scheduled = make_criterion("max_probability")
    scheduled.start_token(8)
    p = 0.9  # above tau(6) ~ 0.83, below tau(1) ~ 0.96
    logits = [math.log(p), math.log(1 - p)]
    assert scheduled.should_exit(view(6, logits)) and not scheduled.should_exit(view(1, logits))


def test_top2_margin_entropy_convergence():
    m = make_criterion("top2_margin", threshold=0.5)
    m.start_token(8)
    assert m.should_exit(view(1, [math.log(0.8), math.log(0.2)])) and not m.should_exit(view(1, [math.log(0.6), math.log(0.4)]))
    e = make_criterion("entropy_based", threshold=0.5)
    e.start_token(8)
    assert e.should_exit(view(1, [5.0, 0.0])) and not e.should_exit(view(1, [0.0, 0.0]))  # entropy ln2 = 0.69
    hot = make_criterion("entropy_based", threshold=0.5, temperature=10.0)
    hot.start_token(8)
    assert not hot.should_exit(view(1, [5.0, 0.0]))
    c = make_criterion("convergence", threshold=0.05)
    c.start_token(8)
    assert not c.should_exit(view(1, [math.log(0.6), math.log(0.4)]))
    assert c.should_exit(view(2, [math.log(0.62), math.log(0.38)]))
    assert not c.should_exit(view(3, [math.log(0.9), math.log(0.1)]))


def test_random_and_logits_future():
    r = make_criterion("random", seed=3)
    for _ in range(20):
        r.start_token(8)
        assert 2 <= r.target <= 6
    f = make_criterion("logits_future", high=0.9, low=0.5)
    f.start_token(6)
    assert f.current == 6 and not f.should_exit(view(5)) and f.should_exit(view(6))
    f.observe_exit(view(6, [5.0, 0.0]))  # confident: exit earlier next time
    f.start_token(6)
    assert f.current == 5
    f.observe_exit(view(5, [0.0, 0.0, 0.0]))  # unsure (max 1/3): later
    assert f.current == 6


def test_unknown_criterion_and_option():
    with pytest.raises(LayerskipError, match="unknown criterion"):
        make_criterion("vibes")
    with pytest.raises(LayerskipError, match="takes no option"):
        make_criterion("token_repeat", threshold=0.5)


def test_draft_and_verify_threshold_update():
    policy = ConfidenceThreshold(6, gamma=0.5)
    assert policy.keep_drafting(0.6) and not policy.keep_drafting(0.4)
    policy.update(drafted=3, accepted=0, limit=6)  # poor acceptance, stopped early: raise gamma
    assert policy.mean_acceptance == pytest.approx(0.5)
    assert policy.gamma == pytest.approx(0.9 * 0.5 + 0.1 * 0.51)
    before = policy.gamma
    policy.update(drafted=6, accepted=6, limit=6)  # hit the maximum: target held
    assert policy.gamma == pytest.approx(before)
    h = HeuristicLength(4, max_tokens=8)
    h.update(4, 4, 4)
    assert h.round_limit() == 6
    h.update(6, 2, 6)
    assert h.round_limit() == 5
    h.reset()
    policy.reset()
    assert h.round_limit() == 4 and policy.gamma == 0.5 and policy.mean_acceptance == 1.0


@pytest.mark.parametrize("length", ["fixed", "threshold", "heuristic"])
def test_adaptive_lengths_start_each_generation_afresh_and_report_k(tiny_model, length):
    config = GenerationConfig(max_steps=30, sampling=GREEDY)
    fresh = lambda: build_drafter(DraftConfig(exit_layer=2, num_speculations=3, draft_length=length), tiny_model.num_layers)
    reused = fresh()
    first = generate(tiny_model, PROMPT, config, Decoding(reused)).stats
    again = generate(tiny_model, PROMPT, config, Decoding(reused)).stats
    assert again.as_dict() | {"total_time": 0, "time_to_first_token": 0, "time_per_token": 0, "tokens_per_second": 0} == \
        first.as_dict() | {"total_time": 0, "time_to_first_token": 0, "time_per_token": 0, "tokens_per_second": 0}
    assert first.drafted_tokens == generate(tiny_model, PROMPT, config, Decoding(fresh())).stats.drafted_tokens
    assert (first.draft.num_speculations, first.draft.draft_length) == (3, length)


@pytest.fixture(scope="module")
def exiting_model(tiny_dir):
    """The tiny model with layers 1.. damped (x0.3) and logits sharpened (final norm x10): every
    criterion below exits early on some tokens and at the deepest layer on others, and drafts are
    rejected often enough that every acceptance path runs."""
    model = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    dampen_layers(model, 1, 0.3)
    with torch.no_grad():
        model.model.norm.weight.mul_(10.0)
    return prepare_for_inference(model)


ACCEPTS_ALL = {"criteria_token_repeat"}  # it exits only where three layers agree: every draft is accepted
DYNAMIC_EXIT = 4  # the deepest exit of the criteria drafts: the layer count, so token_repeat (patience 3) can fire
STRATEGIES = {
    **{f"criteria_{name}": DraftConfig(exit_layer=DYNAMIC_EXIT, num_speculations=4, criteria=name) for name in CRITERIA},
    "skip_attn_mlp": DraftConfig(num_speculations=4, skip_attn=(1,), skip_mlp=(2,)),
    "skip_with_exit": DraftConfig(exit_layer=3, num_speculations=3, skip_mlp=(0,)),
    "random_skip": DraftConfig(exit_layer=4, num_speculations=3, layer_skip_proportion=0.3),
    "threshold_length": DraftConfig(exit_layer=2, num_speculations=6, draft_length="threshold", confidence_threshold=0.3),
    "heuristic_length": DraftConfig(exit_layer=2, num_speculations=2, draft_length="heuristic"),
    "criteria_with_threshold_length": DraftConfig(exit_layer=3, num_speculations=5, criteria="top2_margin", threshold=0.2,
                                                 draft_length="threshold", confidence_threshold=0.2),
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_draft_strategy_is_exact(exiting_model, name):
    config = GenerationConfig(max_steps=30, sampling=GREEDY)
    expected = generate(exiting_model, PROMPT, config).token_ids
    draft = STRATEGIES[name]
    got = generate(exiting_model, PROMPT, config, Decoding(build_drafter(draft, exiting_model.num_layers)))
    assert got.token_ids == expected
    s = got.stats
    assert s.drafted_tokens > 0
    assert (s.accepted_tokens == s.drafted_tokens) == (name in ACCEPTS_ALL)  # rejections: every verification path ran
    if draft.criteria:
        histogram = s.exit_layer_histogram
        assert sum(histogram.values()) == s.drafted_tokens  # one exit per drafted token
        assert min(histogram) < draft.exit_layer  # the criterion let some tokens exit early
        if draft.criteria != "random":  # random exits in [E/4, 3E/4] by design
            assert max(histogram) == draft.exit_layer  # and kept others to the deepest layer


def test_dynamic_drafts_report_exit_layers(tiny_model):
    drafter = build_drafter(DraftConfig(exit_layer=3, num_speculations=4, criteria="random"), tiny_model.num_layers)
    stats = generate(tiny_model, PROMPT, GenerationConfig(max_steps=20, sampling=GREEDY), Decoding(drafter)).stats
    assert stats.exit_layer_histogram and set(stats.exit_layer_histogram) <= {1, 2, 3}
    assert 1 <= stats.mean_exit_layer <= 3


def test_layerwise_drafter_sampling_is_seeded_and_counts_add_up(tiny_model):
    def run(seed: int):
        drafter = build_drafter(DraftConfig(exit_layer=3, num_speculations=3, criteria="top2_margin", threshold=0.1), tiny_model.num_layers)
        config = GenerationConfig(max_steps=15, sampling=SamplingConfig(sample=True, temperature=1.0), seed=seed)
        return generate(tiny_model, PROMPT, config, Decoding(drafter))

    result = run(0)
    s = result.stats
    assert result.token_ids == run(0).token_ids and result.token_ids != run(1).token_ids
    assert s.generated_tokens == 15 == 1 + s.accepted_tokens + s.verify_forwards
    assert sum(s.exit_layer_histogram.values()) == s.drafted_tokens


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_autoregressive_dynamic_exit_leaves_valid_kv_everywhere(tiny_model, criterion):
    """After dynamic exits, every layer holds K/V for every earlier position: those of the full
    forward below the exit, and the state-propagated ones (projections of h_exit) above it."""
    model = tiny_model
    L = model.num_layers
    cache = KVCache(model.config, 1, 32, "cpu", torch.float32)
    unwritten = 12345.0  # a finite marker: masked slots of the static cache must stay finite
    for buffer in cache.keys + cache.values:
        buffer.fill_(unwritten)
    crit = make_criterion(criterion, **({"seed": 1} if criterion == "random" else {}))
    with torch.inference_mode():
        model.run_layers(model.embed(torch.tensor([PROMPT[:-1]])), 0, L, cache, 0)
        tokens, exits = list(PROMPT), []
        for step in range(8):
            slot = len(tokens) - 1
            walk = walk_layers(model, torch.tensor([[tokens[-1]]]), cache, slot, L, [crit])
            exits.append(walk.exit_layers[0])
            tokens.append(int(walk.logits[0].argmax()))
        length = len(tokens) - 1
        assert not any((buffer[:, :, :length] == unwritten).any() for buffer in cache.keys + cache.values)
        # recompute each decoded token's exit state with the cache as context, then its K/V
        for i, exit_layer in enumerate(exits):
            slot = len(PROMPT) - 1 + i
            scratch = KVCache(model.config, 1, 32, "cpu", torch.float32)
            for mine, theirs in zip(scratch.keys + scratch.values, cache.keys + cache.values):
                mine.copy_(theirs)
            h = model.run_layers(model.embed(torch.tensor([[tokens[slot]]])), 0, exit_layer, scratch, slot)
            keys = lambda c: torch.stack(c.keys)[:, :, :, slot]  # noqa: E731  [layers, batch, kv_heads, head_dim]
            torch.testing.assert_close(keys(scratch), keys(cache))  # layers < exit: unchanged
            model.propagate_state(h, exit_layer, L, scratch, slot)
            torch.testing.assert_close(keys(scratch), keys(cache))
            torch.testing.assert_close(torch.stack(scratch.values)[:, :, :, slot], torch.stack(cache.values)[:, :, :, slot])


def test_autoregressive_dynamic_exit_through_generate(tiny_model):
    crit = make_criterion("top2_margin", threshold=0.0)  # random tiny model: tiny margins, so any margin exits
    result = generate(tiny_model, PROMPT, GenerationConfig(max_steps=12, sampling=GREEDY), Decoding(criterion=crit))
    s = result.stats
    assert len(result.token_ids) == 12 and sum(s.exit_layer_histogram.values()) == 11
    assert s.mean_exit_layer < tiny_model.num_layers


def test_draft_config_round_trip_and_errors(tmp_path):
    config = DraftConfig(exit_layer=3, num_speculations=4, criteria="token_repeat", patience=2, skip_mlp=(0, 1))
    path = tmp_path / "draft.json"
    path.write_text(json.dumps({"draft": config.to_dict(), "measured": {}}))
    assert load_draft_config(str(path)) == config
    zero = DraftConfig(exit_layer=3, num_speculations=2, criteria="top2_margin", threshold=0.0)
    path.write_text(json.dumps({"draft": zero.to_dict()}))
    assert load_draft_config(str(path)) == zero and "threshold=0.0" in zero.label()  # 0.0 is a value, not "unset"
    path.write_text(json.dumps({"exit_layer": 2, "num_speculations": 3, "skip_layers": {"attn": [1]}}))
    assert load_draft_config(str(path)).skip_attn == (1,)
    path.write_text(json.dumps({"exit_layers": 2}))
    with pytest.raises(LayerskipError, match="unknown key"):
        load_draft_config(str(path))
    with pytest.raises(LayerskipError, match="no such file"):
        load_draft_config(str(tmp_path / "missing.json"))
