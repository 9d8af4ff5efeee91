"""Whole-head pruning of nn.MultiheadAttention (torchvision's ViT, nn.TransformerEncoderLayer, hand-written nets).

nn.MultiheadAttention ties its inner width to its embedding width (num_heads x head_dim == embed_dim), so
it cannot lose a head and stay an nn.MultiheadAttention. A self-attention one (called with query, key and
value the same tensor, one in_proj_weight, no bias_k / bias_v, no add_zero_attn) has a heads group of its
own (`MhaHeads`, kind "heads"); removing heads first turns it into a `FusedMultiheadAttention`, in place in
its parent: the same computation and call signature (query, key, value, key_padding_mask, need_weights,
attn_mask, average_attn_weights, is_causal; batch_first or not), with a fused `qkv` Linear and a `proj`
Linear whose inner width is free. It has the fused-attention layout (autoprune.prune.attention), so its
heads then go as any fused attention's (rows of q, k, v, columns of proj; head_dim stays) and later traces
see it as one layer. Its state_dict keys are `qkv.*` / `proj.*`: a pruned model is rebuilt by applying its
plan to the architecture (autoprune.weights), which converts it the same way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.prune.attention import FusedAttention, of_module


class FusedMultiheadAttention(nn.Module):
    """nn.MultiheadAttention's forward with a fused `qkv` Linear (q | k | v rows, head by head) and a `proj`
    Linear: num_heads x head_dim need not equal embed_dim. Built from one by `from_mha` (same outputs)."""

    # nn.TransformerEncoderLayer checks these before taking its fused kernel: never take it with this module
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = False):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.qkv = nn.Linear(embed_dim, 3 * num_heads * head_dim, bias=bias)
        self.proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "FusedMultiheadAttention":
        fused = cls(mha.embed_dim, mha.num_heads, mha.head_dim, mha.in_proj_bias is not None, mha.dropout,
                    mha.batch_first)
        with torch.no_grad():
            fused.qkv.weight.copy_(mha.in_proj_weight)
            fused.proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                fused.qkv.bias.copy_(mha.in_proj_bias)
            if mha.out_proj.bias is not None and fused.proj.bias is not None:
                fused.proj.bias.copy_(mha.out_proj.bias)
        return fused.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype).train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, _ = query.shape
        h, d = self.num_heads, self.head_dim
        inner = h * d
        w, b = self.qkv.weight, self.qkv.bias
        q, k, v = (F.linear(x, w[i * inner:(i + 1) * inner], None if b is None else b[i * inner:(i + 1) * inner])
                   .reshape(n, x.shape[1], h, d).transpose(1, 2) for i, x in enumerate((query, key, value)))
        scores = (q * d ** -0.5) @ k.transpose(-2, -1)                          # (n, h, L, S)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(length, k.shape[2], dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask.view(n, h, length, -1) if attn_mask.dim() == 3 else attn_mask
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask.view(n, 1, 1, -1)
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        weights = scores.softmax(-1)
        attended = F.dropout(weights, self.dropout) if self.training and self.dropout > 0 else weights
        out = self.proj((attended @ v).transpose(1, 2).reshape(n, length, inner))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(1) if average_attn_weights else weights
        return out, weights if batched else weights.squeeze(0)


def supports_heads(mha: nn.Module) -> bool:
    """An nn.MultiheadAttention whose heads can go: one in_proj_weight, no bias_k / bias_v, no zero attention."""
    return (isinstance(mha, nn.MultiheadAttention) and mha._qkv_same_embed_dim and mha.bias_k is None
            and not mha.add_zero_attn and mha.num_heads > 1)


@dataclass(frozen=True)
class MhaHeads:
    """The heads of an nn.MultiheadAttention `name` (child `attr` of `parent`)."""

    name: str
    module: nn.MultiheadAttention
    parent: nn.Module
    attr: str

    @property
    def num_heads(self) -> int:
        return int(self.module.num_heads)

    @property
    def head_dim(self) -> int:
        return int(self.module.head_dim)

    @property
    def members(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}.out_proj")

    def scored_weights(self) -> tuple[tuple[str, torch.Tensor], tuple[str, torch.Tensor]]:
        """(name, weight) of the fused q / k / v rows and of the output columns."""
        return ((f"{self.name}.in_proj_weight", self.module.in_proj_weight),
                (f"{self.name}.out_proj.weight", self.module.out_proj.weight))

    def fuse(self) -> FusedAttention:
        """Replace the module by its FusedMultiheadAttention in the parent (same outputs); its heads."""
        if getattr(self.parent, self.attr) is not self.module:
            raise RuntimeError(f"{self.name} is no longer the nn.MultiheadAttention that was traced")
        fused = FusedMultiheadAttention.from_mha(self.module)
        setattr(self.parent, self.attr, fused)
        return of_module(fused, self.name)


@contextlib.contextmanager
def self_attention_calls(model: nn.Module) -> Iterator[dict]:
    """Within the block, the yielded dict records for each nn.MultiheadAttention of `model` that is called
    whether every call was a self-attention (query, key and value the same tensor)."""
    calls: dict[nn.Module, bool] = {}

    def record(module, args, kwargs):
        q, k, v = (args[i] if len(args) > i else kwargs.get(key) for i, key in enumerate(("query", "key", "value")))
        calls[module] = calls.get(module, True) and q is k is v

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True)
             for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    try:
        yield calls
    finally:
        for hook in hooks:
            hook.remove()


def self_attention_heads(model: nn.Module, calls: dict) -> list[MhaHeads]:
    """The MhaHeads of every nn.MultiheadAttention of `model` that `supports_heads` and that `calls`
    (self_attention_calls) saw called as a self-attention only."""
    out = []
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if calls.get(child) and supports_heads(child):
                out.append(MhaHeads(f"{parent_name}.{attr}" if parent_name else attr, child, parent, attr))
    return out


__all__ = ["FusedMultiheadAttention", "MhaHeads", "self_attention_calls", "self_attention_heads", "supports_heads"]
