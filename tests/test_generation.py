"""Greedy self-speculative decoding equals autoregressive decoding token for token (float32)."""

from __future__ import annotations

import pytest
import torch

from layerskip.decoding.types import DecodeBatch, Draft

from layerskip.drafters.base import Drafter

from layerskip.drafters.early_exit import EarlyExitDrafter
from layerskip.decoding.settings import Decoding, GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.decoding.sampling import SamplingConfig

GREEDY = SamplingConfig(sample=False)
PROMPTS = {1: [0], 5: [0, 17, 42, 99, 7], 23: [0] + list(range(30, 52))}


def autoregressive(model, prompt, **kw):
    return generate(model, prompt, GenerationConfig(sampling=GREEDY, **kw))


@pytest.mark.parametrize("prompt_len", sorted(PROMPTS))
@pytest.mark.parametrize("exit_layer", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_self_speculative_equals_autoregressive(tiny_model, prompt_len, exit_layer, k):
    prompt = PROMPTS[prompt_len]
    expected = autoregressive(tiny_model, prompt, max_steps=37)
    got = generate(tiny_model, prompt, GenerationConfig(max_steps=37, sampling=GREEDY), Decoding(EarlyExitDrafter(exit_layer, k)))
    assert got.token_ids == expected.token_ids
    assert got.stats.generated_tokens == 37
    assert got.stats.drafted_tokens > 0
    # every round adds its accepted drafts and one token of the full model's (no stop token here)
    assert got.stats.generated_tokens == 1 + got.stats.accepted_tokens + got.stats.verify_forwards
    assert got.stats.verify_forwards < 37


@pytest.mark.parametrize("max_steps", [1, 2, 3, 5, 8, 9])
def test_max_steps_boundaries(tiny_model, max_steps):
    prompt = PROMPTS[5]
    expected = autoregressive(tiny_model, prompt, max_steps=max_steps)
    for k in (1, 3, 4):
        got = generate(tiny_model, prompt, GenerationConfig(max_steps=max_steps, sampling=GREEDY), Decoding(EarlyExitDrafter(2, k)))
        assert got.token_ids == expected.token_ids
        assert len(got.token_ids) == max_steps


def test_stop_token_inside_a_draft(tiny_model):
    prompt = PROMPTS[5]
    full = autoregressive(tiny_model, prompt, max_steps=40).token_ids
    # pick stop tokens whose first occurrence is at several depths of the output
    for stop in dict.fromkeys(full[3:20]):
        first = full.index(stop)
        expected = full[: first + 1]
        ar = autoregressive(tiny_model, prompt, max_steps=40, stop_token_ids=(stop,))
        assert ar.token_ids == expected and ar.stats.stop_reason == "stop_token"
        for exit_layer, k in ((1, 5), (2, 3), (3, 6)):
            cfg = GenerationConfig(max_steps=40, sampling=GREEDY, stop_token_ids=(stop,))
            got = generate(tiny_model, prompt, cfg, Decoding(EarlyExitDrafter(exit_layer, k)))
            assert got.token_ids == expected, (stop, exit_layer, k)


class ScriptedDrafter(Drafter):
    """Proposes a fixed script of tokens (a stub: deterministic accept/reject cases)."""

    def __init__(self, script: list[list[int]]) -> None:
        self.script = script
        self.max_tokens = max(len(s) for s in script)
        self.updates: list[tuple[int, int]] = []

    def propose(self, batch: DecodeBatch, limits, states) -> Draft:
        tokens = self.script.pop(0)[: limits[0]] if self.script else []
        return Draft(tokens=[tokens], probs=[None], forwards=len(tokens))

    def update(self, state, drafted: int, accepted: int) -> None:
        self.updates.append((drafted, accepted))


def test_drafter_without_reuse_is_verified_exactly(tiny_model):
    prompt = PROMPTS[5]
    full = autoregressive(tiny_model, prompt, max_steps=12).token_ids
    # round 1: two right drafts then a wrong one; round 2: wrong first; round 3: all right
    bad = (full[4] + 1) % 300
    script = [[full[1], full[2], (full[3] + 1) % 300], [bad, full[4]], [full[5], full[6], full[7]]]
    drafter = ScriptedDrafter(script)
    got = generate(tiny_model, prompt, GenerationConfig(max_steps=12, sampling=GREEDY), Decoding(drafter))
    assert got.token_ids == full
    assert drafter.updates[:3] == [(3, 2), (2, 0), (3, 3)]


def test_early_exit_inference_is_the_truncated_model(tiny_model):
    prompt = PROMPTS[5]
    got = generate(tiny_model, prompt, GenerationConfig(max_steps=6, sampling=GREEDY), Decoding(depth=2))
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            tokens.append(int(tiny_model(torch.tensor([tokens]), exit_layer=2)[0, -1].argmax()))
    assert got.token_ids == tokens[len(prompt):]
    assert got.stats.exit_layer == 2


def test_stop_words_end_generation(tiny_model, tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=True)

    prompt = PROMPTS[5]
    full = autoregressive(tiny_model, prompt, max_steps=30).token_ids
    text = decode(full)
    word = text[10:12]
    assert word.strip()
    cfg = GenerationConfig(max_steps=30, sampling=GREEDY, stop_words=(word,))
    for drafter in (None, EarlyExitDrafter(2, 5)):
        got = generate(tiny_model, prompt, cfg, Decoding(drafter), decode=decode)
        out = decode(got.token_ids)
        assert word in out and word not in decode(got.token_ids[:-1])
        assert got.stats.stop_reason == "stop_word"
        assert got.token_ids == full[: len(got.token_ids)]


def test_no_repeat_ngram_applies_to_every_verified_position(tiny_model):
    prompt = PROMPTS[5]
    cfg = GenerationConfig(max_steps=40, sampling=SamplingConfig(sample=False, no_repeat_ngram_size=2))
    expected = generate(tiny_model, prompt, cfg)
    seq = prompt + expected.token_ids
    bigrams = list(zip(seq, seq[1:]))
    assert len(bigrams) == len(set(bigrams))
    for k in (2, 5):
        assert generate(tiny_model, prompt, cfg, Decoding(EarlyExitDrafter(2, k))).token_ids == expected.token_ids


def test_stats_are_consistent(tiny_model):
    got = generate(tiny_model, PROMPTS[5], GenerationConfig(max_steps=20, sampling=GREEDY), Decoding(EarlyExitDrafter(2, 3)))
    s = got.stats
    assert s.exit_layer == 2 and s.draft.num_speculations == 3
    assert s.acceptance_rate == pytest.approx(s.accepted_tokens / s.drafted_tokens)
    assert s.draft_forwards == s.drafted_tokens
    assert s.mean_tokens_per_verification == pytest.approx((20 - 1) / s.verify_forwards)
    assert s.total_time >= s.time_to_first_token > 0
    assert s.tokens_per_second == pytest.approx(20 / s.total_time)
