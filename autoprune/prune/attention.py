"""Attention with a fused qkv Linear (timm's ViT / DeiT / Swin / ..., torchvision's MaxViT): heads pruned as
units.

An attention module is found by its shape, not its class: a module with a fused qkv nn.Linear whose
output is 3 x (num_heads x head_dim), an output nn.Linear taking num_heads x head_dim inputs, and an int
head count, under the attribute names of one of the known `LAYOUTS` (`qkv` / `proj` / `num_heads`: timm
and most hand-written attentions; `to_qkv` / `merge` / `n_heads`: torchvision's MaxViT). For
torch-pruning's dependency graph the whole module is one layer (a customized pruner registered for its
class): its input and output channels are the residual stream, so the trace never enters it (its reshape
/ permute / unbind chain, relative position bias tables and window shuffles are no channel dependencies)
and the residual stream, class token and position embedding prune together.

Its heads are a group of their own (kind "heads", named after the module): removing head h removes rows
h*d..(h+1)*d of each of q, k and v in qkv (weight and bias), the same input columns of the output
Linear, and index h of the last dimension of the module's own parameters sized num_heads (a relative
position bias table); the head count follows (head_dim stays). At least one head always stays.

Some attentions tie their inner width (num_heads x head_dim) to their input width (`tied`): torchvision's
Swin derives its head size as `C // num_heads` (no int `head_dim`), MaxViT reshapes the heads' output
back to its input width. A module with an int `head_dim` and inner width equal to its input width is
probed: a copy without one head is run on the input it saw during the trace, and is tied if that fails.
The heads of a tied module cannot go, but the residual stream can, in multiples of num_heads: each head
then loses the same number of its least important dims (rows of q, k, v and columns of the output
Linear), so that num_heads x head_dim stays equal to the width.

While torch-pruning traces, each such module's output is a single autograd node whose only input is
the module's input (`opaque_during_trace`): the trace does not walk its internals (reshapes, rolls,
window partitions, masks), which made torch-pruning's trace of torchvision's Swin run for more than
10 minutes or past 8 GB.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp


@dataclass(frozen=True)
class Layout:
    """The attribute names of a fused attention's parts."""

    qkv: str     # the fused q / k / v nn.Linear
    proj: str    # the output nn.Linear
    heads: str   # the int head count


LAYOUTS = (Layout("qkv", "proj", "num_heads"),      # timm, and most hand-written attentions
           Layout("to_qkv", "merge", "n_heads"))    # torchvision's MaxViT


def layout_of(module: nn.Module) -> Optional[Layout]:
    """The layout whose parts `module` has, with consistent shapes; None for any other module."""
    for layout in LAYOUTS:
        qkv, proj = getattr(module, layout.qkv, None), getattr(module, layout.proj, None)
        heads = getattr(module, layout.heads, None)
        if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and type(heads) is int and heads > 0):
            continue
        inner = qkv.out_features
        if inner % 3 == 0 and (inner // 3) % heads == 0 and proj.in_features == inner // 3:
            return layout
    return None


def is_fused_attention(module: nn.Module) -> bool:
    return layout_of(module) is not None


@dataclass(frozen=True)
class FusedAttention:
    name: str
    module: Any     # an nn.Module with the parts of `layout` (is_fused_attention)
    layout: Layout
    tied: bool = False   # its inner width must stay its input width (heads stay; see the module doc)

    @property
    def qkv(self) -> nn.Linear:
        return getattr(self.module, self.layout.qkv)

    @property
    def proj(self) -> nn.Linear:
        return getattr(self.module, self.layout.proj)

    @property
    def num_heads(self) -> int:
        return int(getattr(self.module, self.layout.heads))

    @property
    def head_dim(self) -> int:
        return self.qkv.out_features // 3 // self.num_heads

    @property
    def members(self) -> tuple[str, ...]:
        return (f"{self.name}.{self.layout.qkv}", f"{self.name}.{self.layout.proj}")

    def scored_weights(self) -> tuple[tuple[str, torch.Tensor], tuple[str, torch.Tensor]]:
        """(name, weight) of the fused q / k / v rows and of the output columns."""
        qkv, proj = self.members
        return ((f"{qkv}.weight", self.qkv.weight), (f"{proj}.weight", self.proj.weight))


def of_module(module: nn.Module, name: str = "") -> FusedAttention:
    layout = layout_of(module)
    if layout is None:
        raise ValueError(f"{type(module).__name__} is not a fused attention module")
    return FusedAttention(name, module, layout)


def fused_attentions(model: nn.Module) -> list[FusedAttention]:
    return [FusedAttention(name, m, layout) for name, m in model.named_modules()
            if (layout := layout_of(m)) is not None]


def is_tied(att: FusedAttention, call: Optional[tuple] = None) -> bool:
    """Whether the module's inner width must stay its input width: no int `head_dim` and inner width ==
    input width (the head size is derived from the width, as Swin's `C // num_heads`), or an int
    `head_dim` and a copy without one head fails on `call` (the (x, args, kwargs) it saw while traced)."""
    if att.qkv.in_features != att.proj.in_features:
        return False
    if not isinstance(getattr(att.module, "head_dim", None), int):
        return True
    if call is None or att.num_heads < 2:
        return False
    probe = copy.deepcopy(att.module)
    remove_heads(FusedAttention(att.name, probe, att.layout), [att.num_heads - 1])
    x, args, kwargs = call
    try:
        with torch.no_grad():
            probe(x, *args, **kwargs)
    except Exception:  # any error: without the head it no longer runs
        return True
    return False


def _head_params(module: nn.Module, heads: int) -> list[str]:
    """The module's own parameters (not qkv's / proj's) indexed by head on their last dimension."""
    return [n for n, p in module.named_parameters(recurse=False) if p.dim() >= 1 and p.shape[-1] == heads]


def _keep(t: torch.Tensor, keep: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(t.detach().index_select(dim, keep.to(t.device)).clone(), requires_grad=t.requires_grad)


def _keep_inner(att: FusedAttention, cols: torch.Tensor) -> None:
    """Keep inner dims `cols` (of num_heads x head_dim): those rows of each of q, k and v in qkv (weight and
    bias) and those input columns of the output Linear."""
    qkv, proj = att.qkv, att.proj
    rows = torch.cat([cols + part * proj.in_features for part in range(3)])
    with torch.no_grad():
        qkv.weight = _keep(qkv.weight, rows, 0)
        if qkv.bias is not None:
            qkv.bias = _keep(qkv.bias, rows, 0)
        qkv.out_features = len(rows)
        proj.weight = _keep(proj.weight, cols, 1)
        proj.in_features = len(cols)


def remove_heads(att: FusedAttention, heads: Sequence[int]) -> None:
    """Remove `heads` (indices) from the attention module in place."""
    m, h, d = att.module, att.num_heads, att.head_dim
    drop = {int(i) for i in heads}
    kept = [i for i in range(h) if i not in drop]
    if not kept or any(not 0 <= i < h for i in drop):
        raise ValueError(f"cannot remove heads {sorted(drop)} of {h}")
    inner = h * d
    cols = torch.tensor([i * d + j for i in kept for j in range(d)])
    with torch.no_grad():
        for name in _head_params(m, h):
            setattr(m, name, _keep(getattr(m, name), torch.tensor(kept), getattr(m, name).dim() - 1))
        for extra in ("q_bias", "v_bias"):   # BEiT-style separate q / v biases
            b = getattr(m, extra, None)
            if isinstance(b, torch.Tensor) and b.shape[-1] == inner:
                setattr(m, extra, _keep(b, cols, b.dim() - 1))
    _keep_inner(att, cols)
    setattr(m, att.layout.heads, len(kept))
    if isinstance(getattr(m, "head_dim", None), int):
        m.head_dim = d


def shrink_head_dims(att: FusedAttention, width: int) -> None:
    """A tied attention whose input width became `width`: every head keeps width / num_heads of its dims,
    the ones with the largest L2 norm over q, k, v rows and output columns; an int `head_dim` follows."""
    m, h, qkv, proj = att.module, att.num_heads, att.qkv, att.proj
    inner = proj.in_features
    d, keep_d = inner // h, width // h
    if width % h or keep_d < 1:
        raise ValueError(f"width {width} does not split into {h} heads")
    if keep_d == d:
        return
    w = qkv.weight.detach().float().reshape(3, h, d, -1).pow(2).sum((0, 3))
    w = w + proj.weight.detach().float().reshape(-1, h, d).pow(2).sum(0)
    dims = torch.argsort(w, dim=1, descending=True, stable=True)[:, :keep_d].sort(dim=1).values
    _keep_inner(att, (dims + torch.arange(h).view(-1, 1) * d).flatten())
    if isinstance(getattr(m, "head_dim", None), int):
        m.head_dim = keep_d


class _Boundary(torch.autograd.Function):
    """y, as a new autograd node whose only input is x (never differentiated: tracing only)."""

    @staticmethod
    def forward(ctx, x, y):  # noqa: D102
        return y.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        raise RuntimeError("an attention made opaque for tracing is not differentiable")


@contextlib.contextmanager
def opaque_during_trace(modules: Sequence[nn.Module]) -> Iterator[dict]:
    """Within the block, each module computes its output without autograd and hands it on as one node
    fed by its input alone, so a dependency trace sees the module as a single layer. Yields a dict that
    fills with each module's first call, (x, args, kwargs) detached, for `is_tied`."""
    calls: dict = {}

    def wrap(module, forward):
        def opaque(x, *args, **kwargs):
            with torch.no_grad():
                y = forward(x, *args, **kwargs)
            if module not in calls:
                calls[module] = (x.detach() if isinstance(x, torch.Tensor) else x, args, kwargs)
            if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.requires_grad:
                return _Boundary.apply(x, y)
            return y
        return opaque

    patched = []
    for m in modules:
        if "forward" not in vars(m):
            m.forward = wrap(m, m.forward)
            patched.append(m)
    try:
        yield calls
    finally:
        for m in patched:
            del m.forward


def head_scores(att: Any, score) -> torch.Tensor:
    """One score per head of `att` (a FusedAttention, or autoprune.prune.mha.MhaHeads): `score(name,
    tensor)` summed over the q / k / v rows and the output columns the head owns."""
    h, d = att.num_heads, att.head_dim
    (qkv_name, qkv), (proj_name, proj) = att.scored_weights()
    w = score(qkv_name, qkv).reshape(3, h, d, -1).sum((0, 2, 3))
    p = score(proj_name, proj).reshape(-1, h, d).sum((0, 2))
    return (w + p).float()


class FusedAttentionPruner(tp.pruner.BasePruningFunc):
    """torch-pruning's view of a fused-qkv attention module: one layer whose input and output channels
    are the residual stream (columns of qkv, rows of the output Linear). `tied`: the modules whose head
    dims follow their input width (filled once the trace has probed them)."""

    def __init__(self, tied: set):
        super().__init__()
        self.tied = tied

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        tp.prune_linear_out_channels(of_module(layer).proj, idxs)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        att = of_module(layer)
        tp.prune_linear_in_channels(att.qkv, idxs)
        if layer in self.tied:
            shrink_head_dims(att, att.qkv.in_features)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return of_module(layer).proj.out_features

    def get_in_channels(self, layer: nn.Module) -> int:
        return of_module(layer).qkv.in_features


__all__ = ["LAYOUTS", "FusedAttention", "FusedAttentionPruner", "Layout", "fused_attentions", "head_scores",
           "is_fused_attention", "is_tied", "layout_of", "of_module", "opaque_during_trace", "remove_heads",
           "shrink_head_dims"]
