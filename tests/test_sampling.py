"""Speculative sampling reproduces the target distribution; logits processors behave as upstream's."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from helpers import dampen_layers

from layerskip.model.adapter import init_adapter, save_adapter
from layerskip.drafters.adapter import AdapterDrafter
from layerskip.drafters.draft_head import save_ranking

from layerskip.drafters.early_exit import EarlyExitDrafter
from layerskip.checkpoints.loading import load_model
from layerskip.decoding.settings import Decoding, GenerationConfig
from layerskip.decoding.loop import generate
from layerskip.decoding.sampling import SamplingConfig, banned_ngram_tokens, probabilities, process_logits
from layerskip.decoding.verification import accept_greedy, accept_sampled


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Upper critical value of chi-square (Wilson-Hilferty), z=3.09 is alpha=0.001."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: dict, probs: dict, n: int) -> tuple[float, int]:
    stat = sum((counts.get(key, 0) - n * p) ** 2 / (n * p) for key, p in probs.items() if p > 0)
    assert all(probs.get(key, 0) > 0 for key in counts), "an impossible outcome was produced"
    return stat, sum(1 for p in probs.values() if p > 0) - 1


def test_accept_greedy_cases():
    target = torch.full((4, 5), -1.0)
    for row, tok in enumerate([3, 1, 4, 0]):
        target[row, tok] = 1.0
    assert accept_greedy([3, 1, 4], target).tokens == [3, 1, 4, 0]
    assert accept_greedy([3, 2, 4], target).tokens == [3, 1]
    assert accept_greedy([0, 1, 4], target).tokens == [3]
    assert accept_greedy([], target[:1]).tokens == [3]


def test_accept_sampled_matches_target_distribution():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1, 0.0], [0.1, 0.1, 0.1, 0.1, 0.6]])
    q = torch.tensor([[0.1, 0.1, 0.2, 0.3, 0.3]])
    n = 20000
    counts: dict[int, int] = {}
    accepted = 0
    for _ in range(n):
        d = int(torch.multinomial(q[0], 1, generator=gen))
        verdict = accept_sampled([d], q, p, gen)
        counts[verdict.tokens[0]] = counts.get(verdict.tokens[0], 0) + 1
        accepted += verdict.accepted
    stat, df = chi2(counts, dict(enumerate(p[0].tolist())), n)
    assert stat < chi2_critical(df)
    # acceptance probability is sum_x min(p, q)
    assert abs(accepted / n - float(torch.minimum(p[0], q[0]).sum())) < 0.02


def test_accept_sampled_equal_distributions_always_accepts():
    gen = torch.Generator().manual_seed(1)
    p = torch.tensor([[0.25, 0.25, 0.5], [0.25, 0.25, 0.5], [1.0, 0.0, 0.0]])
    for _ in range(100):
        verdict = accept_sampled([2, 1], p[:2], p, gen)
        assert verdict.accepted == 2 and verdict.tokens == [2, 1, 0]


def make_drafter(kind: str, model, directory):
    """An exit-1 drafter: plain, over a frequency-ranked vocabulary subset, or through an adapter."""
    if kind == "early_exit":
        return EarlyExitDrafter(1, 2)
    ranking = torch.arange(model.config.vocab_size - 1, -1, -1)  # favour high ids; the subset drops the rest
    save_ranking(directory, ranking)
    if kind == "draft_vocab":
        model.source_path = directory
        return EarlyExitDrafter(1, 2, draft_vocab=150)
    save_adapter(init_adapter(model, 1, "attention", model.num_layers - 1), directory)
    return AdapterDrafter(directory, 2, draft_vocab=200 if kind == "adapter_draft_vocab" else None)


def three_token_law(model, prompt: list[int], sampling: SamplingConfig) -> dict[tuple, float]:
    """The full model's exact joint law of the first three tokens after ``prompt`` under ``sampling``."""
    exact: dict[tuple, float] = {}
    with torch.no_grad():
        def dist(ctx):
            return probabilities(process_logits(model(torch.tensor([ctx]))[0, -1:].float(), sampling))[0]

        p1 = dist(prompt)
        for a in torch.nonzero(p1).flatten().tolist():
            p2 = dist(prompt + [a])
            for b in torch.nonzero(p2).flatten().tolist():
                p3 = dist(prompt + [a, b])
                for c in torch.nonzero(p3).flatten().tolist():
                    exact[(a, b, c)] = float(p1[a] * p2[b] * p3[c])
    return exact


@pytest.mark.parametrize("kind", ["early_exit", "draft_vocab", "adapter", "adapter_draft_vocab"])
def test_self_speculative_sampling_reproduces_full_model_distribution(tiny_dir, tmp_path, kind):
    """Joint law of the first three generated tokens vs the exact full-model law (top-k 3)."""
    tiny_model = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    dampen_layers(tiny_model, 1, 0.3)  # the exit-1 draft agrees with the full model only partly
    sampling = SamplingConfig(sample=True, temperature=1.5, top_k=3, top_p=1.0)
    prompt = [0, 17, 42]
    exact = three_token_law(tiny_model, prompt, sampling)
    n = 1500
    counts: dict[tuple, int] = {}
    drafter = make_drafter(kind, tiny_model, tmp_path)
    accepted = drafted = 0
    for seed in range(n):
        got = generate(tiny_model, prompt, GenerationConfig(max_steps=3, sampling=sampling, seed=seed), Decoding(drafter))
        key = tuple(got.token_ids)
        counts[key] = counts.get(key, 0) + 1
        accepted += got.stats.accepted_tokens
        drafted += got.stats.drafted_tokens
    assert 0 < accepted < drafted  # both branches of rejection sampling were exercised
    stat, df = chi2(counts, exact, n)
    assert stat < chi2_critical(df), (stat, df)


def test_top_k_top_p_temperature():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    out = process_logits(logits, SamplingConfig(sample=True, temperature=1.0, top_k=2, top_p=1.0))
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()
    probs = logits.softmax(-1)[0]
    cfg = SamplingConfig(sample=True, temperature=1.0, top_k=0, top_p=float(probs[0] + 0.01))
    out = process_logits(logits, cfg)
    assert torch.isfinite(out[0, :2]).all() and torch.isinf(out[0, 2:]).all()
    out = process_logits(logits, SamplingConfig(sample=True, temperature=0.5, top_p=1.0))
    torch.testing.assert_close(out, logits / 0.5)
    assert torch.equal(process_logits(logits, SamplingConfig(sample=False)), logits)


def test_banned_ngram_tokens():
    assert sorted(banned_ngram_tokens([1, 2, 3, 1, 2], 3)) == [3]
    assert banned_ngram_tokens([1, 2, 3], 3) == []
    assert sorted(set(banned_ngram_tokens([5, 6, 5, 7, 5], 2))) == [6, 7]
    assert list(itertools.chain(banned_ngram_tokens([], 2))) == []
