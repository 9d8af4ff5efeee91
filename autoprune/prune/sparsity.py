"""Non-structured sparsity patterns as boolean keep-masks (True = keep), and what they buy in size.

Patterns (each `*_mask` returns a bool tensor of the weight's shape; the pruning engine holds them in a
MaskSet, which zeroes the weights in place):

    unstructured_mask(w, amount)              layer-wise magnitude: the round(amount * numel) smallest |w| go
    global_unstructured_masks([w1, w2], a)    one magnitude percentile over all the tensors together
    nm_mask(w, n=2, m=4)                      N:M: in every M consecutive input weights keep the N largest
    block_mask(w, amount, block=(4, 4))       blocks of the 2-D view [out, in*k*k], ranked by L2 norm

Magnitude *threshold* pruning (every |w| < t goes) is the in-place primitive
autoprune.prune.threshold.prune_below_threshold_ (O(n) time, O(1) extra space), not a mask.

What sparsity does *not* buy: the tensors stay dense, so dense kernels run exactly as fast (ONNX Runtime's
CPU provider has no sparse convolution; N:M pays off only on hardware with sparse tensor cores) and the
file is exactly as large. Size shrinks only with a sparse encoding, and the indices cost bytes too:
`sparse_encoding_bytes` gives the honest numbers for CSR and bitmask encodings. Masks are meant to be
re-applied after each fine-tuning step, or the zeros grow back.

Ties are broken by position (stable sorts), so every mask is deterministic and exact in its counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from autoprune.errors import ConfigError

LAYERS = (nn.modules.conv._ConvNd, nn.Linear)  # layers whose weights are sparsified


# ------------------------------------------------------------------------------------------ helpers

def _check_amount(amount) -> float:
    try:
        amount = float(amount)
    except (TypeError, ValueError):
        raise ConfigError(f"sparsity amount {amount!r} is not a number: use a fraction like 0.5") from None
    if not 0.0 <= amount <= 1.0:
        raise ConfigError(f"sparsity amount {amount} is outside [0, 1]: use a fraction like 0.5 (half the weights)")
    return amount


def _check_weight(weight) -> None:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.numel() == 0:
        raise ConfigError(f"sparsity masks need a non-empty floating-point tensor, got "
                          f"{getattr(weight, 'dtype', type(weight).__name__)}: pass a layer's weight")


def _check_nm(n, m) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n <= m):
        raise ConfigError(f"N:M sparsity needs integers 1 <= N <= M, got {n}:{m}: use e.g. n=2, m=4")


def _check_block(block) -> None:
    if not isinstance(block, Sequence) or len(block) != 2 or not all(isinstance(b, int) and b >= 1 for b in block):
        raise ConfigError(f"block shape {tuple(block)} must be two positive integers: use e.g. (1, 4) or (4, 4)")


def _drop_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat keep-mask of `scores` with its k smallest entries (first ones first on ties) set to False."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        keep[torch.argsort(scores.reshape(-1), stable=True)[:k]] = False
    return keep


def _scores_for(weight: torch.Tensor, scores: Optional[torch.Tensor], default: torch.Tensor) -> torch.Tensor:
    if scores is None:
        return default
    if not isinstance(scores, torch.Tensor) or scores.shape != weight.shape:
        raise ConfigError(f"importance scores of shape {tuple(getattr(scores, 'shape', ()))} do not fit weight of "
                          f"shape {tuple(weight.shape)}: score this layer's weight")
    return scores.detach().float()


def tiles(weight: torch.Tensor, pattern: str, n: int = 2, m: int = 4, block: Sequence[int] = (1, 4)) -> bool:
    """Whether `pattern` ("n:m"/"nm" or "block") fits this weight's shape (unstructured always fits)."""
    if pattern in ("n:m", "nm"):
        return weight.dim() >= 2 and weight.shape[1] % m == 0
    if pattern == "block":
        return weight.shape[0] % block[0] == 0 and (weight.numel() // weight.shape[0]) % block[1] == 0
    return True


def sparsity(tensor: torch.Tensor) -> float:
    """Fraction of exactly-zero elements."""
    return 1.0 - int(torch.count_nonzero(tensor)) / max(1, tensor.numel())


# ----------------------------------------------------------------------------------------- patterns

def unstructured_mask(weight: torch.Tensor, amount: float, *, scores: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Layer-wise magnitude mask: drop exactly round(amount * numel) smallest |w| (`amount` in [0, 1]).

    `scores` (the weight's shape, higher = more important; see autoprune.prune.saliency) replaces |w| in
    the ranking. To zero every |w| below a threshold instead, use the in-place primitive
    autoprune.prune.threshold.prune_below_threshold_ (O(n) time, O(1) extra space)."""
    _check_weight(weight)
    with torch.no_grad():
        k = round(_check_amount(amount) * weight.numel())
        return _drop_smallest(_scores_for(weight, scores, weight.abs()), k).view(weight.shape)


def global_unstructured_masks(weights: Sequence[torch.Tensor], amount: Optional[float] = None, *,
                              scores: Optional[Sequence[torch.Tensor]] = None,
                              drop: Optional[int] = None) -> list[torch.Tensor]:
    """One ranking over all `weights` together (the engine's prune.unstructured_scope=global): the
    smallest |w| (or `scores`) of the union are dropped, round(amount * total) of them or exactly `drop`,
    so layers of small scale lose more than layers of large scale. O(total) extra memory."""
    weights = list(weights)
    if not weights:
        raise ConfigError("global sparsity needs at least one weight tensor: check which layers are selected")
    if (amount is None) == (drop is None):
        raise ConfigError("give exactly one of amount (fraction of all weights) or drop (how many)")
    for w in weights:
        _check_weight(w)
    ranked = [_scores_for(w, s, w.abs()) for w, s in zip(weights, scores if scores else [None] * len(weights))]
    with torch.no_grad():
        flat = torch.cat([r.detach().reshape(-1).float() for r in ranked])
        keep = _drop_smallest(flat, round(_check_amount(amount) * flat.numel()) if drop is None else drop)
    return [part.view(w.shape) for part, w in zip(keep.split([w.numel() for w in weights]), weights)]


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4, *, scores: Optional[torch.Tensor] = None) -> torch.Tensor:
    """N:M mask along the input dimension (dim 1): for every output and kernel position, each run of M
    consecutive input channels keeps its N largest |w| (exactly N nonzeros per group; sparsity 1 - N/M).

    The grouping follows the channels-last GEMM layout that sparse tensor cores use ([out, kh, kw, in])."""
    _check_weight(weight)
    _check_nm(n, m)
    if weight.dim() < 2 or weight.shape[1] % m:
        raise ConfigError(f"N:M sparsity needs an input dimension divisible by M={m}, got weight shape "
                          f"{tuple(weight.shape)}: choose an M that divides it or leave this layer out")
    with torch.no_grad():
        scores = _scores_for(weight, scores, weight.abs()).movedim(1, -1)  # [out, *kernel, in]
        groups = scores.reshape(*scores.shape[:-1], -1, m)                 # [out, *kernel, in/M, M]
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
        return keep.reshape(scores.shape).movedim(-1, 1).contiguous()   # [out, in, *kernel]


def block_mask(weight: torch.Tensor, amount: float, block: Sequence[int] = (1, 4), *,
               scores: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Block mask over the 2-D view [out, in*k*k]: tile it with (rows, cols) blocks, drop the
    round(amount * n_blocks) blocks of smallest L2 norm (or smallest sum of `scores`), whole."""
    _check_weight(weight)
    _check_block(block)
    rows, cols = weight.shape[0], weight.numel() // weight.shape[0]
    br, bc = block
    if rows % br or cols % bc:
        raise ConfigError(f"block {br}x{bc} does not tile the weight's 2-D view [{rows}, {cols}] (shape "
                          f"{tuple(weight.shape)}): pick a block shape that divides it or leave this layer out")
    amount = _check_amount(amount)
    with torch.no_grad():
        per_weight = _scores_for(weight, scores, weight.float().pow(2))   # squared L2 norm by default
        norms = per_weight.reshape(rows // br, br, cols // bc, bc).sum(dim=(1, 3))  # [rows/br, cols/bc]
        keep = _drop_smallest(norms, round(amount * norms.numel())).view(norms.shape)
        keep = keep[:, None, :, None].expand(-1, br, -1, bc)                # [rows/br, br, cols/bc, bc]
        return keep.reshape(weight.shape)


# ---------------------------------------------------------------------------------------- encodings

@dataclass(frozen=True)
class EncodingBytes:
    """Bytes to store one tensor densely and in two sparse encodings (payload only: no shape header,
    no alignment padding). `csr` and `bitmask` can exceed `dense` when the tensor is not sparse enough."""

    numel: int
    nnz: int
    dense: int    # numel values
    csr: int      # nnz values + nnz column indices + (rows + 1) row pointers, over the 2-D view [rows, numel/rows]
    bitmask: int  # nnz values + one bit per element

    @property
    def best(self) -> tuple[str, int]:
        """The smallest of the three encodings, as (name, bytes)."""
        return min((("dense", self.dense), ("csr", self.csr), ("bitmask", self.bitmask)), key=lambda e: e[1])


def sparse_encoding_bytes(tensor: torch.Tensor, index_bits: int = 32,
                          value_bits: Optional[int] = None) -> EncodingBytes:
    """Honest sizes of `tensor` stored dense, as CSR and as a bitmask.

    The tensor is seen as the 2-D matrix [shape[0], numel / shape[0]] (one row for 0-/1-D tensors).
    CSR = ceil(nnz * value_bits / 8) + ceil(nnz * index_bits / 8) + ceil((rows + 1) * index_bits / 8);
    bitmask = ceil(nnz * value_bits / 8) + ceil(numel / 8). `value_bits` defaults to the tensor's dtype
    (32 for float32); pass 8 for int8-quantised values. `index_bits` must be wide enough for the largest
    column index and for the row pointers (which reach nnz), otherwise this raises ConfigError."""
    if not isinstance(index_bits, int) or index_bits < 1:
        raise ConfigError(f"index_bits={index_bits!r} must be a positive integer: use 16 or 32")
    value_bits = tensor.element_size() * 8 if value_bits is None else value_bits
    if not isinstance(value_bits, int) or value_bits < 1:
        raise ConfigError(f"value_bits={value_bits!r} must be a positive integer: use 32 for float32, 8 for int8")
    numel = tensor.numel()
    rows = tensor.shape[0] if tensor.dim() >= 2 and numel else 1
    cols = numel // rows
    nnz = int(torch.count_nonzero(tensor))
    needed = max(cols - 1, nnz).bit_length()  # bits for the largest column index and the last row pointer
    if needed > index_bits:
        wide = next(b for b in (8, 16, 32, 64, needed) if b >= needed)
        raise ConfigError(f"index_bits={index_bits} cannot hold column indices up to {cols - 1} and row pointers up "
                          f"to {nnz}: use index_bits={wide}")
    nbytes = lambda bits: -(-bits // 8)  # noqa: E731  ceil(bits / 8)
    values = nbytes(nnz * value_bits)
    return EncodingBytes(
        numel=numel, nnz=nnz, dense=nbytes(numel * value_bits),
        csr=values + nbytes(nnz * index_bits) + nbytes((rows + 1) * index_bits),
        bitmask=values + nbytes(numel),
    )


@dataclass(frozen=True)
class ModelEncoding:
    """What a (masked) model's weights cost to store: `dense` bytes of every parameter, `sparse` bytes with
    each conv / linear weight in its best encoding (dense, CSR or bitmask) and every other parameter dense,
    and the fraction of zeros over the conv / linear weights (`weight_sparsity`)."""

    dense: int
    sparse: int
    weight_sparsity: float
    weights: int        # conv / linear weight elements
    zeros: int


def model_encoding(model: nn.Module, index_bits: int = 32) -> ModelEncoding:
    """Dense vs best sparse encoding of a model's parameters (see `sparse_encoding_bytes`)."""
    weight_ids = {id(m.weight) for m in model.modules() if isinstance(m, LAYERS) and m.weight is not None}
    dense = sparse = weights = zeros = 0
    for p in model.parameters():
        size = p.numel() * p.element_size()
        dense += size
        if id(p) in weight_ids:
            enc = sparse_encoding_bytes(p.detach(), index_bits=max(index_bits, max(p.numel(), 2).bit_length()))
            sparse += enc.best[1]
            weights += enc.numel
            zeros += enc.numel - enc.nnz
        else:
            sparse += size
    return ModelEncoding(dense, sparse, zeros / weights if weights else 0.0, weights, zeros)


__all__ = ["EncodingBytes", "ModelEncoding", "block_mask", "global_unstructured_masks", "model_encoding", "nm_mask",
           "sparse_encoding_bytes", "sparsity", "tiles", "unstructured_mask"]
