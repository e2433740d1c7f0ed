"""Layer dropout schedule values (LayerSkip eq. for p_{l,t})."""

from __future__ import annotations

import math

import pytest
import torch

from layerskip.training.layer_dropout import depth_shape, dropout_rates, sample_keep_mask, time_shape


def test_exponential_depth_shape_runs_from_zero_to_one():
    L = 8
    values = [depth_shape(l, L, "exponential") for l in range(L)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(1.0)
    assert values[3] == pytest.approx(math.exp(3 * math.log(2) / 7) - 1)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_linear_and_uniform_shapes():
    assert [depth_shape(l, 5, "linear") for l in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]
    assert [depth_shape(l, 5, "uniform") for l in range(5)] == [1.0] * 5
    with pytest.raises(ValueError):
        depth_shape(0, 5, "cubic")


def test_time_shapes():
    assert time_shape(0, 100, "constant") == time_shape(99, 100, "constant") == 1.0
    assert time_shape(0, 100, "exponential") == 0.0
    assert time_shape(99, 100, "exponential") == pytest.approx(1.0)
    assert time_shape(50, 101, "exponential") == pytest.approx(math.sqrt(2) - 1)


def test_rates_are_product_of_shapes_and_p_max():
    rates = dropout_rates(4, 0.2, step=10, total_steps=21, depth="linear", time="exponential")
    s = math.exp(10 * math.log(2) / 20) - 1
    assert rates == pytest.approx([0.0, s * 0.2 / 3, s * 0.4 / 3, s * 0.2])
    with pytest.raises(ValueError):
        dropout_rates(4, 1.5)


def test_keep_mask_is_per_sample_with_the_right_frequency():
    g = torch.Generator().manual_seed(0)
    keep = sample_keep_mask([0.0, 0.5, 1.0], 20000, g)
    assert keep.shape == (3, 20000)
    assert keep[0].all() and not keep[2].any()
    assert abs(keep[1].float().mean().item() - 0.5) < 0.02
