"""The magnitude-threshold primitive: exact counts, in place, biases only on request."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from autoprune.errors import ConfigError
from autoprune.prune.threshold import prune_below_threshold_, prune_module_below_threshold_


def test_exact_count_in_place():
    t = torch.tensor([[0.5, -0.05, 0.0, 0.1], [-0.2, 0.09, -0.1, 3.0]])
    ptr = t.data_ptr()
    # |v| < 0.1: -0.05 and 0.09 (0.0 is already zero, +-0.1 is not below the threshold)
    assert prune_below_threshold_(t, 0.1) == 2
    assert t.data_ptr() == ptr
    assert torch.equal(t, torch.tensor([[0.5, 0.0, 0.0, 0.1], [-0.2, 0.0, -0.1, 3.0]]))
    assert prune_below_threshold_(t, 0.1) == 0  # nothing left to zero


def test_threshold_zero_changes_nothing():
    t = torch.tensor([1e-30, -1e-30, 0.0, 2.0])
    before = t.clone()
    assert prune_below_threshold_(t, 0.0) == 0
    assert torch.equal(t, before)


def test_chunking_and_non_contiguous_views_match_a_full_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 999)
    expected = (x.abs() < 0.5) & (x != 0)
    reference = x.masked_fill(x.abs() < 0.5, 0.0)
    view = x.t()  # not contiguous: cannot be flattened without a copy
    assert not view.is_contiguous()
    assert prune_below_threshold_(view, 0.5, chunk_size=100) == int(expected.sum())
    assert torch.equal(x, reference)


def test_module_leaves_biases_and_batchnorm_alone_by_default():
    layer = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        layer[0].weight.copy_(torch.tensor([[0.01, 0.5, -0.02, 1.0]] * 3))
        layer[0].bias.copy_(torch.tensor([0.01, -0.01, 0.5]))
        layer[1].weight.fill_(0.01)
    bias_ptr = layer[0].bias.data_ptr()
    assert prune_module_below_threshold_(layer, 0.05) == 6  # two small weights in each of the 3 rows
    assert (layer[0].weight == 0).sum() == 6
    assert layer[0].bias.tolist() == pytest.approx([0.01, -0.01, 0.5])
    assert layer[1].weight.tolist() == pytest.approx([0.01] * 3)  # BatchNorm scales are not connections
    assert prune_module_below_threshold_(layer, 0.05, include_bias=True) == 2  # only the two small biases now
    assert layer[0].bias.data_ptr() == bias_ptr
    assert layer[0].bias.tolist() == pytest.approx([0.0, 0.0, 0.5])


def test_parameters_that_require_grad_can_still_be_trained():
    conv = nn.Conv2d(2, 2, 3)
    n = prune_below_threshold_(conv.weight, 0.1)
    assert n == int((conv.weight == 0).sum()) > 0
    conv(torch.randn(1, 2, 5, 5)).sum().backward()
    assert conv.weight.grad is not None


@pytest.mark.parametrize("threshold", [-0.1, float("nan"), "big"])
def test_bad_threshold_is_a_config_error(threshold):
    with pytest.raises(ConfigError, match="threshold"):
        prune_below_threshold_(torch.ones(3), threshold)


def test_integer_tensor_is_rejected():
    with pytest.raises(ConfigError, match="floating-point"):
        prune_below_threshold_(torch.ones(3, dtype=torch.int64), 0.5)
