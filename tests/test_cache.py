"""The shared KV cache: rollback moves a length; verification reuses draft K/V exactly."""

from __future__ import annotations

import pytest
import torch

from layerskip.model.cache import KVCache
from layerskip.decoding.types import DecodeState
from layerskip.drafters.early_exit import EarlyExitDrafter
from layerskip.decoding.sampling import SamplingConfig
from layerskip.decoding.verification import verify


def test_write_returns_the_whole_buffer_and_overflow_is_an_error(tiny_model):
    cache = KVCache(tiny_model.config, 1, 6, "cpu", torch.float32)
    k = torch.ones(1, 2, 3, tiny_model.config.head_dim)
    keys, values = cache.write(0, cache.slots(2, 3), k, k)
    assert keys.shape[2] == 6 and keys.data_ptr() == cache.keys[0].data_ptr()  # static: the same buffer every call
    assert torch.equal(keys[:, :, 2:5], k) and not keys[:, :, :2].any() and not keys[:, :, 5:].any()
    with pytest.raises(ValueError):
        cache.slots(5, 3)
    with pytest.raises(ValueError):
        cache.slots(-1, 2)


def test_mask_and_positions_follow_each_rows_padding(tiny_model):
    """Row b's token at slot s has position s - pad[b] and sees key slots pad[b]..s; a padding
    query sees 0..s (its output is never used, but stays finite)."""
    cache = KVCache(tiny_model.config, 2, 5, "cpu", torch.float32, pad=torch.tensor([0, 2]))
    slots = cache.slots(1, 3)  # slots 1, 2, 3
    assert cache.positions(slots).tolist() == [[1, 2, 3], [0, 0, 1]]
    mask = cache.mask(slots)
    assert mask.shape == (2, 1, 3, 5)
    assert mask[0, 0].int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert mask[1, 0].int().tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0]]


def test_rollback_then_overwrite_matches_a_fresh_cache(tiny_model):
    """After drafting junk past the verified tokens and rolling back, decoding the true tokens
    gives the same logits and the same cache contents as a cache that never saw the junk."""
    model = tiny_model
    prompt = torch.tensor([[0, 5, 6, 7, 8]])
    truth = torch.tensor([[9, 10, 11]])
    junk = torch.tensor([[100, 101, 102, 103]])
    with torch.no_grad():
        clean = KVCache(model.config, 1, 16, "cpu", torch.float32)
        model(prompt, clean, 0)
        expected = model(truth, clean, 5)

        dirty = KVCache(model.config, 1, 16, "cpu", torch.float32)
        model(prompt, dirty, 0)
        model(junk, dirty, 5, exit_layer=2)  # draft layers only
        model(junk[:, :2], dirty, 5)  # a full verification of junk
        ptrs = [t.data_ptr() for t in dirty.keys]
        assert not torch.equal(dirty.keys[0][:, :, 5:8], clean.keys[0][:, :, 5:8])  # stale entries are there
        got = model(truth, dirty, 5)  # the roll back: decode again from slot 5, nothing copied
        assert [t.data_ptr() for t in dirty.keys] == ptrs
    torch.testing.assert_close(got, expected)
    for mine, theirs in zip(dirty.keys + dirty.values, clean.keys + clean.values):
        torch.testing.assert_close(mine[:, :, :8], theirs[:, :, :8])


def test_verification_reuses_draft_states(tiny_model):
    """Verification with reuse (draft layers run for the last draft only) equals a full forward."""
    model = tiny_model
    prompt = [0, 5, 6, 7, 8, 9]
    with torch.no_grad():
        cache = KVCache(model.config, 1, 32, "cpu", torch.float32)
        model(torch.tensor([prompt[:-1]]), cache, 0)
        state = DecodeState(model, cache, list(prompt), 5, SamplingConfig(sample=False), None, frozenset())
        drafter = EarlyExitDrafter(2, 4)
        draft = drafter.propose(state, 10)
        assert len(draft) == 4 and draft.exit_hidden.shape == (1, 4, model.config.hidden_size)
        calls = []
        original = model.run_layers

        def spy(hidden, first, last, *args, **kwargs):
            calls.append((hidden.shape[1], first, last))
            return original(hidden, first, last, *args, **kwargs)

        model.run_layers = spy
        try:
            verdict = verify(state, draft, model.num_layers)
        finally:
            del model.run_layers
        assert calls == [(1, 0, 2), (5, 2, model.num_layers)]
        full = model(torch.tensor([prompt + draft.tokens]))[0, -5:].argmax(-1).tolist()
    n = verdict.accepted
    assert verdict.tokens == draft.tokens[:n] + [full[n]]
