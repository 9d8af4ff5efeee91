"""Importance criteria: exact channel counts for every criterion, and each one ranks what it claims to."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from autoprune.errors import ConfigError
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.prune import (IMPORTANCES, ChannelPruner, GradientStats, PruningEngine, collect_gradients,
                             output_layers)
from autoprune.prune.saliency import weight_scores
from autoprune.tasks.models import resnet_small


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 32, 32, generator=g)
    return TensorDataset(x, (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long())


@pytest.mark.parametrize("criterion", sorted(IMPORTANCES))
def test_every_criterion_gives_exact_channel_counts(criterion):
    torch.manual_seed(0)
    model = resnet_small(widths=(32, 64, 128)).eval()
    x = torch.randn(1, 1, 32, 32)
    engine = PruningEngine(ChannelPruner(x, output_layers(model, x), 8), _data(), calibration_batches=2,
                           batch_size=16)
    plan = PrunePlan({"stem.0": GroupPlan(0.5), "layers.0.0.conv1": GroupPlan(0.3),
                      "layers.2.0.conv2": GroupPlan(0.25)}, criterion)
    engine.apply(model, plan)
    assert model.stem[0].out_channels == 16 and model.layers[0][0].conv2.out_channels == 16
    assert model.layers[0][0].conv1.out_channels == 24
    assert model.layers[2][0].conv2.out_channels == 96 and model.fc.in_features == 96
    assert model(x).shape == (1, 10)


def _dead_channel_net():
    """conv(1->8) -> ReLU -> pool -> linear. Channel 0 has by far the largest weights but a bias so negative
    that ReLU kills it: magnitude keeps it, any gradient criterion knows it does nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[0].weight[0].fill_(1.0)
        model[0].bias[0] = -1e4
    return model


@pytest.mark.parametrize("criterion, dead_removed", [("l2", False), ("l1", False), ("taylor", True),
                                                     ("hessian", True), ("movement", False)])
def test_gradient_criteria_see_a_dead_channel_that_magnitude_keeps(criterion, dead_removed):
    model = _dead_channel_net()
    x = torch.randn(1, 1, 32, 32)
    engine = PruningEngine(ChannelPruner(x, ["4"], 1), _data(), calibration_batches=2, batch_size=32)
    keep_marker = model[0].weight[0, 0, 0, 0].item()
    engine.apply(model, PrunePlan({"0": GroupPlan(0.5)}, criterion))
    assert model[0].out_channels == 4
    still_there = bool((model[0].weight[:, 0, 0, 0] == keep_marker).any())
    if criterion == "movement":   # -w * g is exactly 0 for the dead channel: not lowest when others are negative
        return
    assert still_there != dead_removed


def test_weight_scores_follow_their_formulas():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    stats = GradientStats()
    layer = nn.Linear(2, 2, bias=False)
    layer.weight.data.copy_(w)
    for g in (torch.tensor([[1.0, 1.0], [2.0, -1.0]]), torch.tensor([[3.0, -1.0], [0.0, 1.0]])):
        layer.weight.grad = g
        stats.accumulate(layer)
    assert torch.equal(weight_scores("l1", "weight", w), w.abs())
    assert torch.equal(weight_scores("l2", "weight", w), w * w)
    mean = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(weight_scores("taylor", "weight", w, stats), (w * mean).abs())
    fisher = torch.tensor([[5.0, 1.0], [2.0, 1.0]])
    assert torch.allclose(weight_scores("hessian", "weight", w, stats), 0.5 * w * w * fisher)
    assert torch.allclose(weight_scores("movement", "weight", w, stats), -w * torch.tensor([[4.0, 0.0], [2.0, 0.0]]))
    with pytest.raises(ConfigError, match="needs gradients"):
        weight_scores("taylor", "other.weight", w, stats)
    with pytest.raises(ConfigError, match="scores whole channels"):
        weight_scores("fpgm", "weight", w)


def test_movement_removes_the_weights_moving_towards_zero():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    stats = GradientStats()
    grad = torch.zeros(4, 4)
    grad[:2] = 1.0     # SGD pushes rows 0 and 1 towards zero (w > 0, g > 0): they go
    grad[2:] = -1.0    # rows 2 and 3 grow: they stay
    model[0].weight.grad = grad
    stats.accumulate(model)
    x = torch.randn(1, 4)
    engine = PruningEngine(ChannelPruner(x, ["2"], 1))
    engine.apply(model, PrunePlan({"0": GroupPlan(0.5, "unstructured")}, "movement"), stats=stats)
    assert torch.equal(model[0].weight[:2], torch.zeros(2, 4)) and bool((model[0].weight[2:] != 0).all())


def test_collect_gradients_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = resnet_small(widths=(8, 16, 16)).train()
    running = model.stem[1].running_mean.clone()
    stats = collect_gradients(model, _data(32), n_batches=2, batch_size=8)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(model.stem[1].running_mean, running)     # eval mode: BatchNorm statistics untouched
    assert set(stats.count.values()) == {2} and "stem.0.weight" in stats.sum
    with pytest.raises(ConfigError, match="calibration_batches"):
        collect_gradients(model, _data(32), n_batches=0)


def test_every_criterion_is_declared_once_with_what_it_needs_and_ranks():
    from autoprune.prune.criteria import CRITERIA, check_for_heads, check_for_masks

    assert set(CRITERIA) == set(IMPORTANCES)
    assert {n for n, c in CRITERIA.items() if c.needs_gradients} == {"taylor", "hessian", "movement"}
    check_for_masks(["l2", "taylor"], ["unstructured"])          # weight criteria rank single weights
    check_for_masks(["fpgm"], [])                                # channel pattern only: fine
    with pytest.raises(ConfigError, match=r"\['fpgm'\] scores whole channels .*\['nm'\]"):
        check_for_masks(["l2", "fpgm"], ["nm"])
    with pytest.raises(ConfigError, match=r"\['bn_scale'\] does not apply to attention heads"):
        check_for_heads(["bn_scale"])
