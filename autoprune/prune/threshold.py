"""Magnitude-threshold pruning, the most basic non-structured primitive: zero every weight with |w| < t.

Complexity: O(n) time for a tensor of n elements (one pass) and O(1) extra space in n. The tensor is
walked through a flattened *view* in chunks of `chunk_size` elements, so no full-size boolean mask or
copy is ever made; the torch ops on a chunk allocate temporaries of at most a few times `chunk_size`
elements (|chunk| and two boolean masks), a bound that does not grow with the tensor.

Trade-offs, stated honestly:
- Speed: zeros in a dense tensor do not make dense kernels faster. A conv or matmul multiplies the
  zeros like any other value; ONNX Runtime's CPU provider has no sparse convolution kernels, so the
  measured latency of a threshold-pruned model equals the dense model's. Use structured (channel)
  pruning (autoprune.prune.channels) for latency.
- Memory / size: the tensor keeps its dense shape and byte size. Size only shrinks with a sparse or
  compressed encoding (CSR, bitmask, or a general compressor on the zero runs); see
  autoprune.prune.sparsity.sparse_encoding_bytes for what an encoding actually costs.
- Accuracy may drop, increasingly with the threshold; fine-tune afterwards and keep the zeros fixed
  (re-apply the threshold or a mask after each optimizer step), or they grow back.
- Biases are handled separately: they are few (one per output channel, so nothing to gain in size)
  and each one shifts a whole output map, so `prune_module_below_threshold_` leaves them alone
  unless `include_bias=True`. Normalisation layers' scales and shifts are never touched (zeroing a
  BatchNorm scale silences a channel: that is channel pruning, not weight pruning).
- NaN values compare false with any threshold and are left as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from autoprune.errors import ConfigError

CHUNK_SIZE = 1 << 16  # elements per chunk: 64 Ki floats = 256 KiB of float32 temporaries at most per op

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)  # layers whose weights are connections


def _check(tensor: torch.Tensor, threshold: float, chunk_size: int) -> None:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise ConfigError(f"threshold pruning needs a floating-point tensor, got "
                          f"{getattr(tensor, 'dtype', type(tensor).__name__)}: pass a layer's weight")
    if math.isnan(threshold) or threshold < 0:
        raise ConfigError(f"pruning threshold {threshold} must be a number >= 0 (0 prunes nothing): use e.g. 1e-3")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size} must be a positive number of elements: use e.g. 65536")


def _zero_1d_(flat: torch.Tensor, threshold: float, chunk_size: int) -> int:
    """Zero small entries of a 1-D view (any stride), chunk by chunk; returns how many were nonzero before."""
    zeroed = 0
    for start in range(0, flat.numel(), chunk_size):
        chunk = flat[start:start + chunk_size]     # a view: no copy
        small = chunk.abs() < threshold            # per-chunk temporaries only
        small &= chunk != 0                        # count only values this call changes
        zeroed += int(small.sum())
        chunk.masked_fill_(small, 0.0)
    return zeroed


def _zero_(tensor: torch.Tensor, threshold: float, chunk_size: int) -> int:
    if tensor.dim() <= 1:
        return _zero_1d_(tensor.view(1) if tensor.dim() == 0 else tensor, threshold, chunk_size)
    try:
        flat = tensor.view(-1)                     # contiguous (the usual case): one flat view
    except RuntimeError:                           # non-contiguous (e.g. a transposed view): walk sub-views
        return sum(_zero_(sub, threshold, chunk_size) for sub in tensor.unbind(0))
    return _zero_1d_(flat, threshold, chunk_size)


def prune_below_threshold_(tensor: torch.Tensor, threshold: float, chunk_size: int = CHUNK_SIZE) -> int:
    """Set to zero, in place, every element of `tensor` with |value| < `threshold`.

    Returns the number of elements this call zeroed (nonzero before, zero after), so a second call with
    the same threshold returns 0. `threshold=0` zeroes nothing. Works on parameters that require grad
    (runs under no_grad) and on non-contiguous views. O(n) time, O(1) extra space (see module docstring)."""
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"pruning threshold {threshold!r} is not a number: use e.g. 1e-3") from None
    _check(tensor, threshold, chunk_size)
    if threshold == 0.0:
        return 0
    with torch.no_grad():
        return _zero_(tensor, threshold, chunk_size)


def prune_module_below_threshold_(module: nn.Module, threshold: float, include_bias: bool = False,
                                  chunk_size: int = CHUNK_SIZE) -> int:
    """Threshold-prune the weights of every conv / linear layer in `module` (itself included), in place.

    Biases are left untouched unless `include_bias=True`; normalisation layers and any other parameters
    are never touched. Returns the total number of elements zeroed."""
    total = 0
    for layer in module.modules():
        if not isinstance(layer, PRUNABLE):
            continue
        total += prune_below_threshold_(layer.weight, threshold, chunk_size)
        if include_bias and layer.bias is not None:
            total += prune_below_threshold_(layer.bias, threshold, chunk_size)
    return total


__all__ = ["CHUNK_SIZE", "prune_below_threshold_", "prune_module_below_threshold_"]
