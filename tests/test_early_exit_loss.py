"""Early-exit loss: scales, curricula, and equality with plain cross-entropy when only the last
layer is enabled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layerskip.training.early_exit_loss import enabled_layers, exit_loss, layer_scales, normalized_weights
from layerskip.training.objective import EarlyExitObjective, exit_statistics, run_layer_with_dropout


def test_paper_scales():
    L, e = 5, 0.2
    scales = layer_scales(L, e, "sum_l")
    assert scales[:4] == pytest.approx([0.0, 0.2, 0.6, 1.2])
    assert scales[4] == pytest.approx(4 + 0.2 * (0 + 1 + 2 + 3))
    assert layer_scales(3, 1.0, "one") == [1.0, 1.0, 1.0]
    assert layer_scales(4, 0.5, "l") == pytest.approx([0.0, 0.5, 1.0, 3 + 0.5 * 2])
    with pytest.raises(ValueError):
        layer_scales(4, 1.0, "nope")


def test_normalized_weights_sum_to_one_over_enabled_layers():
    w = normalized_weights([1.0, 2.0, 3.0, 4.0], [False, True, False, True])
    assert w == pytest.approx([0, 2 / 6, 0, 4 / 6])
    with pytest.raises(ValueError):
        normalized_weights([0.0, 0.0], [True, False])


def test_rotational_curriculum_rotates_and_keeps_last_layer():
    L, R = 8, 3
    for step in range(6):
        on = enabled_layers(L, step, 100, "rotational", R)
        assert on[-1]
        assert [l for l in range(L - 1) if on[l]] == [l for l in range(L - 1) if (l - step) % R == 0]
    union = set()
    for step in range(R):
        union |= {l for l, v in enumerate(enabled_layers(L, step, 100, "rotational", R)) if v}
    assert union == set(range(L))


def test_gradual_curriculum_enables_layers_from_the_top():
    L, T = 4, 80  # one more layer every T/(2L) = 10 steps
    assert enabled_layers(L, 0, T, "gradual") == [False, False, False, True]
    assert enabled_layers(L, 10, T, "gradual") == [False, False, True, True]
    assert enabled_layers(L, 29, T, "gradual") == [False, True, True, True]
    assert enabled_layers(L, 30, T, "gradual") == [True] * 4
    assert enabled_layers(L, 79, T, "gradual") == [True] * 4
    assert enabled_layers(L, 5, T, "none") == [True] * 4


def test_last_layer_only_equals_plain_cross_entropy(tiny_model):
    model = tiny_model
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 300, (2, 16), generator=g)
    targets = torch.randint(0, 300, (2, 16), generator=g)
    L = model.num_layers
    weights = normalized_weights(layer_scales(L, 0.2), [False] * (L - 1) + [True])
    loss, per_layer = EarlyExitObjective(model)(inputs, targets, None, weights)
    plain = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(loss, plain)
    assert torch.isnan(per_layer[:-1]).all()


def trainable_model_and_batch(tiny_dir, seed: int):
    """A float32 tiny model with gradients on and a random batch (inputs, targets ``[2, 12]``)."""
    from layerskip.checkpoints.loading import load_model

    model = load_model(tiny_dir, torch.device("cpu"), torch.float32)
    model.requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    return model, torch.randint(0, 300, (2, 12), generator=g), torch.randint(0, 300, (2, 12), generator=g)


def test_weighted_sum_over_exits_and_gradients_flow(tiny_dir):
    model, inputs, targets = trainable_model_and_batch(tiny_dir, 1)
    weights = [0.1, 0.2, 0.3, 0.4]
    loss, per_layer = EarlyExitObjective(model)(inputs, targets, None, weights)
    with torch.no_grad():
        expected_layers = [F.cross_entropy(model(inputs, exit_layer=l + 1).flatten(0, 1), targets.flatten()) for l in range(4)]
    torch.testing.assert_close(per_layer, torch.stack(expected_layers))
    torch.testing.assert_close(loss, sum(w * ce for w, ce in zip(weights, expected_layers)))
    assert exit_statistics(model, inputs, targets)[0] == pytest.approx([float(x) for x in expected_layers], rel=1e-5)
    loss.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None


def test_dropped_layer_is_identity_for_that_sample_only(tiny_model):
    model = tiny_model
    hidden = torch.randn(3, 5, model.config.hidden_size)
    keep = torch.tensor([True, False, True])
    out = run_layer_with_dropout(model, hidden, 1, keep)
    full = model.run_layers(hidden, 1, 2)
    torch.testing.assert_close(out[1], hidden[1])
    torch.testing.assert_close(out[[0, 2]], full[[0, 2]])


def test_distillation_mixes_cross_entropy_and_kl_to_the_teacher():
    g = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(8, 20, bias=False)
    hidden = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 20, (2, 5), generator=g)
    teacher = torch.randn(2, 5, 20, generator=g).log_softmax(-1)
    logits = head(hidden).float()
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    kl = (teacher.exp() * (teacher - logits.log_softmax(-1))).sum(-1).mean()
    loss, reported_ce = exit_loss(head, hidden, targets, teacher, 0.25)
    torch.testing.assert_close(loss, 0.75 * ce + 0.25 * kl)
    torch.testing.assert_close(reported_ce, ce)
    assert exit_loss(head, hidden, targets, teacher, 0.0)[0].item() == pytest.approx(ce.item())
    own = logits.detach().log_softmax(-1)  # the exit is its own teacher: KL = 0
    assert exit_loss(head, hidden, targets, own, 1.0)[0].item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert hidden.grad is not None and head.weight.grad is not None


def test_distillation_pulls_exits_toward_the_last_layer_not_the_reverse(tiny_dir):
    model, inputs, targets = trainable_model_and_batch(tiny_dir, 2)
    # Only the last layer enabled: the teacher is unused and the loss is plain CE.
    last_only = [0.0, 0.0, 0.0, 1.0]
    plain, _ = EarlyExitObjective(model)(inputs, targets, None, last_only)
    distilled, _ = EarlyExitObjective(model, distill=0.5)(inputs, targets, None, last_only)
    torch.testing.assert_close(plain, distilled)
    # Pure distillation at exit 1: no gradient reaches the layers above it (the teacher is detached).
    loss, per_layer = EarlyExitObjective(model, distill=1.0)(inputs, targets, None, [1.0, 0.0, 0.0, 0.0])
    loss.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.model.layers[3].parameters())
    with torch.no_grad():
        ce1 = F.cross_entropy(model(inputs, exit_layer=1).flatten(0, 1), targets.flatten())
    assert per_layer[0].item() == pytest.approx(ce1.item(), rel=1e-5)  # the log keeps reporting CE


def test_exit_statistics_agreement_with_the_last_layer(tiny_model):
    g = torch.Generator().manual_seed(4)
    inputs = torch.randint(0, 300, (2, 10), generator=g)
    targets = torch.randint(0, 300, (2, 10), generator=g)
    losses, agreement = exit_statistics(tiny_model, inputs, targets)
    with torch.no_grad():
        expected = [F.cross_entropy(tiny_model(inputs, exit_layer=l + 1).flatten(0, 1).float(), targets.flatten()) for l in range(4)]
    assert losses == pytest.approx([float(x) for x in expected], rel=1e-5)
    assert agreement[-1] == 1.0
    with torch.no_grad():
        final = tiny_model(inputs).argmax(-1)
        first = tiny_model(inputs, exit_layer=1).argmax(-1)
    assert agreement[0] == pytest.approx(float((first == final).float().mean()))
