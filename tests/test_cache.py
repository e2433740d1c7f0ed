"""The shared KV cache: rollback moves a length; verification reuses draft K/V exactly."""

from __future__ import annotations

import pytest
import torch

from layerskip.model.cache import KVCache
from layerskip.decoding.types import DecodeBatch, Row
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


def test_per_row_starts_give_each_row_its_own_slots_positions_and_mask(tiny_model):
    """Rows at different lengths: row b's T tokens sit at slots start[b].. (= positions), each sees key
    slots 0..its own slot, and a write lands in each row's own slots."""
    cache = KVCache(tiny_model.config, 2, 6, "cpu", torch.float32)
    slots = cache.slots([1, 3], 2)
    assert slots.tolist() == [[1, 2], [3, 4]] and cache.positions(slots).tolist() == [[1, 2], [3, 4]]
    mask = cache.mask(slots)
    assert mask.shape == (2, 1, 2, 6)
    assert mask[0, 0].int().tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    assert mask[1, 0].int().tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]
    k = torch.arange(2 * 2 * 2 * tiny_model.config.head_dim, dtype=torch.float32).view(2, 2, 2, -1) + 1
    keys, _ = cache.write(0, slots, k, k)
    assert torch.equal(keys[0, :, 1:3], k[0]) and torch.equal(keys[1, :, 3:5], k[1])
    assert not keys[0, :, 3:].any() and not keys[1, :, :3].any()
    with pytest.raises(ValueError):
        cache.slots([1, 5], 2)  # row 1 would overflow
    shared = cache.slots(2, 3)
    assert shared.tolist() == [2, 3, 4] and cache.positions(shared).tolist() == [[2, 3, 4]] * 2


def test_narrow_views_share_storage_and_move_row_copies(tiny_model):
    cache = KVCache(tiny_model.config, 3, 4, "cpu", torch.float32)
    view = cache.narrow(1, 2)
    assert view.batch_size == 2 and view.root is cache and cache.narrow(1, 2) is view and cache.narrow(0, 3) is cache
    assert view.narrow(1, 1).first_row == 2
    view.keys[0][1] = 5.0  # row 2 of the root
    assert (cache.keys[0][2] == 5.0).all() and not cache.keys[0][:2].any()
    cache.move_row(2, 0, 3)
    assert (cache.keys[0][0, :, :3] == 5.0).all() and not cache.keys[0][0, :, 3:].any()
    with pytest.raises(ValueError):
        cache.narrow(2, 2)


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
        row = Row(list(prompt), 5, SamplingConfig(sample=False), None, frozenset())
        batch = DecodeBatch(model, cache, [row])
        drafter = EarlyExitDrafter(2, 4)
        draft = drafter.propose(batch, [10], [drafter.new_state()])
        assert len(draft.tokens[0]) == 4 and draft.exit_hidden.shape == (1, 4, model.config.hidden_size)
        calls = []
        original = model.run_layers

        def spy(hidden, first, last, *args, **kwargs):
            calls.append((hidden.shape[1], first, last))
            return original(hidden, first, last, *args, **kwargs)

        model.run_layers = spy
        try:
            verdict, = verify(batch, draft, model.num_layers)
        finally:
            del model.run_layers
        assert calls == [(1, 0, 2), (5, 2, model.num_layers)]
        full = model(torch.tensor([prompt + draft.tokens[0]]))[0, -5:].argmax(-1).tolist()
    n = verdict.accepted
    assert verdict.tokens == draft.tokens[0][:n] + [full[n]]


def test_a_prefill_attends_only_over_the_slots_written(tiny_model):
    """A prompt prefilled into a long cache (a server's) attends over slots 0..start+T-1, not the whole
    capacity: the mask is that wide, and the result equals the same prefill into a cache just long enough."""
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 40))
    long, short = (KVCache(tiny_model.config, 2, capacity, "cpu", torch.float32) for capacity in (4000, 60))
    *_, mask = tiny_model.slot_inputs(long, 0, 40, 2)
    assert mask.shape == (2, 1, 40, 40)
    *_, mask = tiny_model.slot_inputs(long, [10, 3], 20, 2)  # per-row starts: up to the furthest row's end
    assert mask.shape[-1] == 30
    with torch.inference_mode():
        hidden = [tiny_model.run_layers(tiny_model.embed(ids), 0, tiny_model.num_layers, c, 0) for c in (long, short)]
        torch.testing.assert_close(hidden[0], hidden[1], rtol=0, atol=1e-6)
        # then a chunk after it, each row from its own start
        more = torch.randint(0, tiny_model.config.vocab_size, (2, 20))
        after = [tiny_model.run_layers(tiny_model.embed(more), 0, tiny_model.num_layers, c, [40, 33]) for c in (long, short)]
    torch.testing.assert_close(after[0], after[1], rtol=0, atol=1e-6)
