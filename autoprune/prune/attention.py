"""Attention with a fused qkv Linear (timm's ViT / DeiT / Swin / ... layout): heads pruned as units.

An attention module is found by its shape, not its class: a module with a `qkv` nn.Linear whose
output is 3 x (num_heads x head_dim), a `proj` nn.Linear taking num_heads x head_dim inputs, and an int
`num_heads`. For torch-pruning's dependency graph the whole module is one layer (a customized pruner
registered for its class): its input and output channels are the residual stream, so the trace never
enters it (its reshape / permute / unbind chain, relative position bias tables and window shuffles are
no channel dependencies) and the residual stream, class token and position embedding prune together.

Its heads are a group of their own (kind "heads", named after the module): removing head h removes rows
h*d..(h+1)*d of each of q, k and v in `qkv` (weight and bias), the same input columns of `proj`, and
index h of the last dimension of the module's own parameters sized num_heads (a relative position bias
table); `num_heads` follows (head_dim stays). At least one head always stays.

Some attentions derive their head size from the input width (torchvision's Swin: `C // num_heads`, no
`head_dim` attribute): `tied_head_size`. Their heads cannot go, but the residual stream can, in
multiples of num_heads: each head then loses the same number of its least important dims (rows of q,
k, v and columns of proj), so that num_heads x head_dim stays equal to the width.

While torch-pruning traces, each such module's output is a single autograd node whose only input is
the module's input (`opaque_during_trace`): the trace does not walk its internals (reshapes, rolls,
window partitions, masks), which made torch-pruning's trace of torchvision's Swin run for more than
10 minutes or past 8 GB.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp


@dataclass(frozen=True)
class FusedAttention:
    name: str
    module: Any   # an nn.Module with `qkv` / `proj` nn.Linear and an int `num_heads` (is_fused_attention)

    @property
    def num_heads(self) -> int:
        return int(self.module.num_heads)

    @property
    def head_dim(self) -> int:
        return self.module.qkv.out_features // 3 // self.num_heads

    @property
    def members(self) -> tuple[str, ...]:
        return (f"{self.name}.qkv", f"{self.name}.proj")


def is_fused_attention(module: nn.Module) -> bool:
    qkv, proj, heads = getattr(module, "qkv", None), getattr(module, "proj", None), getattr(module, "num_heads", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and isinstance(heads, int) and heads > 0):
        return False
    inner = qkv.out_features
    return inner % 3 == 0 and (inner // 3) % heads == 0 and proj.in_features == inner // 3


def tied_head_size(module: Any) -> bool:   # a fused attention module
    """The module derives its head size from its input width (no int `head_dim`; inner width == input width)."""
    return (not isinstance(getattr(module, "head_dim", None), int)
            and module.qkv.in_features == module.proj.in_features)


def fused_attentions(model: nn.Module) -> list[FusedAttention]:
    return [FusedAttention(name, m) for name, m in model.named_modules() if is_fused_attention(m)]


def _head_params(module: nn.Module, heads: int) -> list[str]:
    """The module's own parameters (not qkv's / proj's) indexed by head on their last dimension."""
    return [n for n, p in module.named_parameters(recurse=False) if p.dim() >= 1 and p.shape[-1] == heads]


def _keep(t: torch.Tensor, keep: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(t.detach().index_select(dim, keep.to(t.device)).clone(), requires_grad=t.requires_grad)


def remove_heads(att: FusedAttention, heads: Sequence[int]) -> None:
    """Remove `heads` (indices) from the attention module in place."""
    m, h, d = att.module, att.num_heads, att.head_dim
    drop = {int(i) for i in heads}
    kept = [i for i in range(h) if i not in drop]
    if not kept or any(not 0 <= i < h for i in drop):
        raise ValueError(f"cannot remove heads {sorted(drop)} of {h}")
    inner = h * d
    cols = torch.tensor([i * d + j for i in kept for j in range(d)])
    rows = torch.cat([cols + part * inner for part in range(3)])
    with torch.no_grad():
        for name in _head_params(m, h):
            setattr(m, name, _keep(getattr(m, name), torch.tensor(kept), getattr(m, name).dim() - 1))
        m.qkv.weight = _keep(m.qkv.weight, rows, 0)
        if m.qkv.bias is not None:
            m.qkv.bias = _keep(m.qkv.bias, rows, 0)
        m.qkv.out_features = len(rows)
        for extra in ("q_bias", "v_bias"):   # BEiT-style separate q / v biases
            b = getattr(m, extra, None)
            if isinstance(b, torch.Tensor) and b.shape[-1] == inner:
                setattr(m, extra, _keep(b, cols, b.dim() - 1))
        m.proj.weight = _keep(m.proj.weight, cols, 1)
        m.proj.in_features = len(cols)
    m.num_heads = len(kept)
    if isinstance(getattr(m, "head_dim", None), int):
        m.head_dim = d


def shrink_head_dims(module: Any, width: int) -> None:   # a fused attention module
    """A `tied_head_size` module whose input width became `width`: every head keeps width / num_heads of
    its dims, the ones with the largest L2 norm over q, k, v rows and proj columns."""
    h = int(module.num_heads)
    inner = module.proj.in_features
    d, keep_d = inner // h, width // h
    if width % h or keep_d < 1:
        raise ValueError(f"width {width} does not split into {h} heads")
    if keep_d == d:
        return
    with torch.no_grad():
        w = module.qkv.weight.detach().float().reshape(3, h, d, -1).pow(2).sum((0, 3))
        w = w + module.proj.weight.detach().float().reshape(-1, h, d).pow(2).sum(0)
        dims = torch.argsort(w, dim=1, descending=True, stable=True)[:, :keep_d].sort(dim=1).values
        cols = (dims + torch.arange(h).view(-1, 1) * d).flatten()
        rows = torch.cat([cols + part * inner for part in range(3)])
        module.qkv.weight = _keep(module.qkv.weight, rows, 0)
        if module.qkv.bias is not None:
            module.qkv.bias = _keep(module.qkv.bias, rows, 0)
        module.qkv.out_features = len(rows)
        module.proj.weight = _keep(module.proj.weight, cols, 1)
        module.proj.in_features = len(cols)


class _Boundary(torch.autograd.Function):
    """y, as a new autograd node whose only input is x (never differentiated: tracing only)."""

    @staticmethod
    def forward(ctx, x, y):  # noqa: D102
        return y.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        raise RuntimeError("an attention made opaque for tracing is not differentiable")


@contextlib.contextmanager
def opaque_during_trace(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, each module computes its output without autograd and hands it on as one node
    fed by its input alone, so a dependency trace sees the module as a single layer."""
    def wrap(forward):
        def opaque(x, *args, **kwargs):
            with torch.no_grad():
                y = forward(x, *args, **kwargs)
            if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.requires_grad:
                return _Boundary.apply(x, y)
            return y
        return opaque

    patched = []
    for m in modules:
        if "forward" not in vars(m):
            m.forward = wrap(m.forward)
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def head_scores(att: FusedAttention, score) -> torch.Tensor:
    """One score per head: `score(name, tensor)` summed over the rows / columns the head owns."""
    h, d = att.num_heads, att.head_dim
    w = score(f"{att.name}.qkv.weight", att.module.qkv.weight).reshape(3, h, d, -1).sum((0, 2, 3))
    p = score(f"{att.name}.proj.weight", att.module.proj.weight).reshape(-1, h, d).sum((0, 2))
    return (w + p).float()


class FusedAttentionPruner(tp.pruner.BasePruningFunc):
    """torch-pruning's view of a fused-qkv attention module: one layer whose input and output channels
    are the residual stream (columns of qkv, rows of proj)."""

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        tp.prune_linear_out_channels(layer.proj, idxs)
        return layer

    def prune_in_channels(self, layer: Any, idxs: Sequence[int]) -> nn.Module:   # a fused attention module
        tied = tied_head_size(layer)
        tp.prune_linear_in_channels(layer.qkv, idxs)
        if tied:
            shrink_head_dims(layer, layer.qkv.in_features)
        return layer

    def get_out_channels(self, layer: Any) -> int:   # a fused attention module
        return layer.proj.out_features

    def get_in_channels(self, layer: Any) -> int:
        return layer.qkv.in_features


__all__ = ["FusedAttention", "FusedAttentionPruner", "fused_attentions", "head_scores", "is_fused_attention",
           "opaque_during_trace", "remove_heads", "shrink_head_dims", "tied_head_size"]
