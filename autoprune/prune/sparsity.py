"""Non-structured sparsity patterns as boolean keep-masks (True = keep), and what they buy in size.

Patterns (each `*_mask` returns a bool tensor of the weight's shape; `apply_mask_` zeroes in place):

    unstructured_mask(w, amount)              layer-wise magnitude: the round(amount * numel) smallest |w| go
    unstructured_mask(w, threshold=t)         magnitude threshold: every |w| < t goes
    global_unstructured_masks([w1, w2], a)    one magnitude percentile over all the tensors together
    nm_mask(w, n=2, m=4)                      N:M: in every M consecutive input weights keep the N largest
    block_mask(w, amount, block=(4, 4))       blocks of the 2-D view [out, in*k*k], ranked by L2 norm

`sparsify_(model, pattern, ...)` applies one pattern to every conv / linear weight of a model.

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

PATTERNS = ("unstructured", "global", "n:m", "block")
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

def unstructured_mask(weight: torch.Tensor, amount: Optional[float] = None, *,
                      threshold: Optional[float] = None, scores: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Layer-wise magnitude mask: drop exactly round(amount * numel) smallest |w|, or every |w| < threshold.

    Give exactly one of `amount` (a fraction in [0, 1]) and `threshold` (>= 0). `scores` (the weight's
    shape, higher = more important; see autoprune.prune.saliency) replaces |w| in the amount ranking."""
    _check_weight(weight)
    if (amount is None) == (threshold is None):
        raise ConfigError("give exactly one of amount (fraction of weights to zero) "
                          "or threshold (|w| below it is zeroed)")
    with torch.no_grad():
        if threshold is not None:
            if not isinstance(threshold, (int, float)) or not threshold >= 0.0:  # also rejects NaN
                raise ConfigError(f"sparsity threshold {threshold!r} must be a number >= 0: use e.g. 1e-3")
            return weight.abs() >= float(threshold)
        k = round(_check_amount(amount) * weight.numel())
        return _drop_smallest(_scores_for(weight, scores, weight.abs()), k).view(weight.shape)


def global_unstructured_masks(weights: Sequence[torch.Tensor], amount: float) -> list[torch.Tensor]:
    """One magnitude percentile over all `weights` together: the round(amount * total) smallest |w| of
    the union are dropped, so layers of small scale lose more than layers of large scale.
    Uses O(total) extra memory for the concatenated magnitudes."""
    weights = list(weights)
    if not weights:
        raise ConfigError("global sparsity needs at least one weight tensor: check which layers are selected")
    for w in weights:
        _check_weight(w)
    with torch.no_grad():
        scores = torch.cat([w.detach().abs().reshape(-1).float() for w in weights])
        keep = _drop_smallest(scores, round(_check_amount(amount) * scores.numel()))
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


def apply_mask_(weight: torch.Tensor, keep: torch.Tensor) -> int:
    """Zero `weight` in place where `keep` is False; returns how many nonzero elements it zeroed."""
    if keep.shape != weight.shape or keep.dtype != torch.bool:
        raise ConfigError(f"mask of shape {tuple(keep.shape)} ({keep.dtype}) does not fit weight of shape "
                          f"{tuple(weight.shape)}: build it with one of the *_mask functions for this weight")
    with torch.no_grad():
        drop = ~keep.to(weight.device)
        zeroed = int(torch.count_nonzero(weight[drop]))
        weight.masked_fill_(drop, 0.0)
    return zeroed


# ------------------------------------------------------------------------------------ whole models

def sparsify_(model: nn.Module, pattern: str, *, amount: Optional[float] = None, threshold: Optional[float] = None,
              n: int = 2, m: int = 4, block: Sequence[int] = (1, 4), ignore: Sequence[str] = ()) -> dict[str, float]:
    """Apply one pattern to the weight of every conv / linear layer of `model` not named in `ignore`
    (pass the output layer there to keep the classifier dense), in place.

    pattern: "unstructured" (amount or threshold, per layer), "global" (amount over all layers together),
    "n:m" (n, m) or "block" (amount, block). For "n:m" and "block", layers whose shape the pattern does not
    tile (e.g. a 3-channel stem, depthwise convs) are left dense and left out of the result.
    Returns {layer name: fraction of its weight that is now zero} for the layers the pattern was applied to."""
    if pattern not in PATTERNS:
        raise ConfigError(f"unknown sparsity pattern '{pattern}': choose one of {list(PATTERNS)}")
    modules = dict(model.named_modules())
    missing = [name for name in ignore if name not in modules]
    if missing:
        raise ConfigError(f"ignored layer(s) {missing} are not in the model: "
                          "check the names against model.named_modules()")
    layers = {name: mod for name, mod in modules.items() if isinstance(mod, LAYERS) and name not in ignore}
    if not layers:
        raise ConfigError("the model has no conv or linear layer left to sparsify: check the ignore list")
    if pattern == "global":
        if amount is None or threshold is not None:
            raise ConfigError("global sparsity takes amount (one fraction over all layers), not threshold")
        masks = dict(zip(layers, global_unstructured_masks([mod.weight for mod in layers.values()], amount)))
    elif pattern == "unstructured":
        masks = {name: unstructured_mask(mod.weight, amount, threshold=threshold) for name, mod in layers.items()}
    elif pattern == "n:m":
        _check_nm(n, m)
        masks = {name: nm_mask(mod.weight, n, m) for name, mod in layers.items()
                 if mod.weight.dim() >= 2 and mod.weight.shape[1] % m == 0}
    else:
        _check_block(block)
        if amount is None or threshold is not None:
            raise ConfigError("block sparsity takes amount (fraction of blocks to zero), not threshold: use amount=0.5")
        masks = {name: block_mask(mod.weight, amount, block) for name, mod in layers.items()
                 if mod.weight.shape[0] % block[0] == 0 and (mod.weight.numel() // mod.weight.shape[0]) % block[1] == 0}
    for name, keep in masks.items():
        apply_mask_(layers[name].weight, keep)
    return {name: sparsity(layers[name].weight) for name in masks}


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


__all__ = ["PATTERNS", "EncodingBytes", "ModelEncoding", "model_encoding", "tiles", "apply_mask_", "block_mask", "global_unstructured_masks", "nm_mask",
           "sparse_encoding_bytes", "sparsify_", "sparsity", "unstructured_mask"]
