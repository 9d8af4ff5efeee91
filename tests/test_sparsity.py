"""Non-structured sparsity patterns: exact counts per pattern, and honest encoding sizes."""

from __future__ import annotations

import pytest
import torch

from autoprune.errors import ConfigError
from autoprune.prune.sparsity import (block_mask, global_unstructured_masks, nm_mask, sparse_encoding_bytes,
                                      unstructured_mask)
from autoprune.prune.threshold import prune_below_threshold_


@pytest.fixture
def weight():
    torch.manual_seed(0)
    return torch.randn(16, 8, 3, 3)


def test_unstructured_by_amount_and_by_threshold(weight):
    keep = unstructured_mask(weight, 0.3)
    assert keep.shape == weight.shape and keep.dtype == torch.bool
    assert int((~keep).sum()) == round(0.3 * weight.numel())
    assert weight[~keep].abs().max() <= weight[keep].abs().min()  # the smallest magnitudes went
    w = weight.clone()                      # by threshold: the one in-place primitive
    prune_below_threshold_(w, 0.5)
    assert torch.equal(w != 0, weight.abs() >= 0.5)
    with pytest.raises(TypeError):
        unstructured_mask(weight, 0.3, threshold=0.5)   # no second threshold implementation
    with pytest.raises(ConfigError, match="outside"):
        unstructured_mask(weight, 1.5)


def test_2_4_keeps_exactly_the_two_largest_of_every_four_inputs(weight):
    keep = nm_mask(weight)
    assert keep.shape == weight.shape
    assert keep.float().mean().item() == 0.5
    groups = keep.movedim(1, -1).reshape(-1, 4)  # groups of 4 consecutive input channels
    assert (groups.sum(dim=1) == 2).all()
    magnitudes = weight.abs().movedim(1, -1).reshape(-1, 4)
    assert (magnitudes[groups].view(-1, 2).min(dim=1).values >= magnitudes[~groups].view(-1, 2).max(dim=1).values).all()
    linear = torch.tensor([[0.1, -4.0, 3.0, 0.2, 5.0, 0.0, -1.0, 0.5]])
    assert nm_mask(linear, n=2, m=4).tolist() == [[False, True, True, False, True, False, True, False]]
    assert nm_mask(linear, n=1, m=8).tolist() == [[False, False, False, False, True, False, False, False]]
    with pytest.raises(ConfigError, match="divisible by M=3"):
        nm_mask(weight, n=1, m=3)
    with pytest.raises(ConfigError, match="1 <= N <= M"):
        nm_mask(weight, n=5, m=4)


def test_block_4x4_zeroes_whole_blocks(weight):
    keep = block_mask(weight, 0.5, block=(4, 4))  # 2-D view [16, 72] -> 4 x 18 blocks
    tiles = keep.view(4, 4, 18, 4).permute(0, 2, 1, 3).reshape(72, 16)
    assert ((tiles.sum(dim=1) == 0) | (tiles.sum(dim=1) == 16)).all()  # every block all kept or all zeroed
    assert int((tiles.sum(dim=1) == 0).sum()) == 36
    norms = weight.view(4, 4, 18, 4).pow(2).sum(dim=(1, 3)).flatten()
    dropped = tiles.sum(dim=1) == 0
    assert norms[dropped].max() <= norms[~dropped].min()
    row = torch.tensor([[1.0, 1.0, 0.1, 0.1, 2.0, 0.0, 0.0, 0.0]])
    assert block_mask(row, 0.5, block=(1, 2)).tolist() == [[True, True, False, False, True, True, False, False]]
    with pytest.raises(ConfigError, match="does not tile"):
        block_mask(weight, 0.5, block=(3, 4))


def test_global_and_layer_wise_differ_on_layers_of_different_scale():
    torch.manual_seed(0)
    sign = lambda: torch.randint(0, 2, (32, 16)) * 2.0 - 1.0  # noqa: E731
    small = torch.rand(32, 16) * 0.01 * sign()        # |w| < 0.01
    large = (1.0 + torch.rand(32, 16)) * sign()       # |w| in [1, 2)
    keep_small, keep_large = global_unstructured_masks([small, large], 0.5)
    assert int((~keep_small).sum()) + int((~keep_large).sum()) == 512
    assert (~keep_small).all() and keep_large.all()  # one percentile: the small-scale layer goes first
    layer_wise = [unstructured_mask(w, 0.5) for w in (small, large)]
    assert [int((~k).sum()) for k in layer_wise] == [256, 256]
    by_count = global_unstructured_masks([small, large], scores=[large.abs(), small.abs()], drop=100)
    assert int((~by_count[1]).sum()) == 100 and by_count[0].all()   # scores rank, not |w|
    with pytest.raises(ConfigError, match="exactly one"):
        global_unstructured_masks([small], 0.5, drop=3)


def test_sparse_encoding_bytes_of_a_known_tensor():
    t = torch.tensor([[0.0, 1.0, 0.0, 2.0],
                      [0.0, 0.0, 0.0, 0.0],
                      [3.0, 0.0, 0.0, 0.0]])  # float32, 3 rows x 4 columns, 3 nonzeros
    enc = sparse_encoding_bytes(t)  # 32-bit indices
    assert (enc.numel, enc.nnz, enc.dense) == (12, 3, 48)
    assert enc.csr == 3 * 4 + 3 * 4 + (3 + 1) * 4 == 40      # values + column indices + row pointers
    assert enc.bitmask == 3 * 4 + 2 == 14                   # values + ceil(12 bits / 8)
    assert enc.best == ("bitmask", 14)
    assert sparse_encoding_bytes(t, index_bits=16).csr == 12 + 6 + 8
    assert sparse_encoding_bytes(t, index_bits=4, value_bits=8).csr == 3 + 2 + 2  # ceil(12/8), ceil(16/8)
    dense = sparse_encoding_bytes(torch.ones(4, 4))
    assert dense.best == ("dense", 64) and dense.csr == 64 + 64 + 20
    with pytest.raises(ConfigError, match="use index_bits=16"):
        sparse_encoding_bytes(torch.ones(2, 300), index_bits=8)
