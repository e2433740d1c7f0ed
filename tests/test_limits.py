"""What fits: positions and KV-cache memory are checked before allocation, with what fits."""

from __future__ import annotations

import pytest

from layerskip.decoding import limits
from layerskip.errors import LayerskipError
from layerskip.decoding.limits import check_fits, kv_cache_bytes


def test_positions_past_the_model_say_how_many_fit(tiny_model):
    limit = tiny_model.config.max_position_embeddings
    check_fits(tiny_model, 10, limit - 10)
    with pytest.raises(LayerskipError, match=f"at most `max_steps` {limit - 10} fit"):
        check_fits(tiny_model, 10, limit - 9)
    with pytest.raises(LayerskipError, match="shorten the prompt"):
        check_fits(tiny_model, limit, 1)


def test_a_cache_larger_than_free_memory_says_how_many_positions_fit(tiny_model, monkeypatch):
    monkeypatch.setattr(limits, "free_memory", lambda device: kv_cache_bytes(tiny_model, 100) + 5)
    check_fits(tiny_model, 10, 90)
    with pytest.raises(LayerskipError, match="at most 100 positions fit"):
        check_fits(tiny_model, 10, 91)
    with pytest.raises(LayerskipError, match="at most 95 positions fit"):
        check_fits(tiny_model, 10, 91, extra_slots=5)


def test_kv_cache_bytes_match_the_cache(tiny_model):
    from layerskip.model.cache import KVCache

    cache = KVCache(tiny_model.config, 1, 37, tiny_model.device, tiny_model.dtype)
    assert kv_cache_bytes(tiny_model, 37) == cache.nbytes
