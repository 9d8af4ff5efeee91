"""Structured pruning of BERT-family encoders (Hugging Face transformers): attention heads and FFN neurons.

A BERT-style layer is found by its shape, not its class: a module with `attention.self.{query,key,value}`
(nn.Linear, with `num_attention_heads` and `attention_head_size`), `attention.output.dense`,
`intermediate.dense` and `output.dense`. BERT, RoBERTa, ELECTRA, MiniLM and friends match. Per layer,
two groups:

    <layer>.attention.self      kind "heads": its attention heads. Removing head h removes rows
                                h*d..(h+1)*d of query/key/value (weights and biases) and the same input
                                columns of attention.output.dense; num_attention_heads / all_head_size follow.
    <layer>.intermediate.dense  kind "ffn": its FFN neurons (rows of intermediate.dense, input columns of
                                output.dense).

The hidden size (the residual stream, tied across every layer and the embeddings) is never pruned.
For mask patterns a group's `layers` are all four attention projections (heads) or both FFN linears
(ffn): every linear of the encoder belongs to exactly one group.
Slicing is physical: the pruned model is a smaller dense model and exports to ONNX as such. Heads are
counted one by one (round_to does not apply: a head is already `attention_head_size` wide); FFN widths
follow the hardware profile's round_to. At least one head and one multiple of neurons always stay.

Importance: the criteria that score single weights (l1, l2, taylor, hessian, movement, random; see
autoprune.prune.saliency), summed over everything a head / neuron owns. bn_scale and fpgm do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from autoprune.errors import PruningError
from autoprune.plan import PrunePlan
from autoprune.prune.channels import PrunableGroup, kept_channels
from autoprune.prune.criteria import check_for_heads
from autoprune.prune.saliency import GradientStats, needs_gradients, weight_scores


@dataclass(frozen=True)
class _Layer:
    prefix: str
    attention: Any            # the BertSelfAttention-like module (num_attention_heads, attention_head_size)
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    inter: nn.Linear
    out: nn.Linear


def _get(module: Any, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def transformer_layers(model: nn.Module) -> list[_Layer]:
    """The BERT-style layers of `model`, in model order."""
    found = []
    for name, module in model.named_modules():
        parts = {p: _get(module, p) for p in ("attention.self", "attention.self.query", "attention.self.key",
                                              "attention.self.value", "attention.output.dense",
                                              "intermediate.dense", "output.dense")}
        if not all(isinstance(parts[p], nn.Linear) for p in parts if p != "attention.self"):
            continue
        attention = parts["attention.self"]
        if not (hasattr(attention, "num_attention_heads") and hasattr(attention, "attention_head_size")):
            continue
        prefix = f"{name}." if name else ""
        found.append(_Layer(prefix, attention, parts["attention.self.query"], parts["attention.self.key"],
                            parts["attention.self.value"], parts["attention.output.dense"],
                            parts["intermediate.dense"], parts["output.dense"]))
    return found


def is_transformer(model: nn.Module) -> bool:
    return bool(transformer_layers(model))


def _slice_linear(layer: nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep rows (dim 0: output features, and the bias) or columns (dim 1: input features), in place."""
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight.index_select(dim, keep).clone())
        if dim == 0:
            if layer.bias is not None:
                layer.bias = nn.Parameter(layer.bias.index_select(0, keep).clone())
            layer.out_features = len(keep)
        else:
            layer.in_features = len(keep)


class TransformerPruner:
    """ChannelPruner's interface (groups, apply, apply_with_indices, apply_indices) for BERT-style encoders."""

    def __init__(self, example_input: torch.Tensor, ignored: Sequence[str] = (), round_to: int = 1):
        self.example_input = example_input
        self.ignored = tuple(ignored)
        self.round_to = int(round_to)

    def _layers(self, model: nn.Module) -> list[_Layer]:
        modules = dict(model.named_modules())
        missing = [n for n in self.ignored if n not in modules]
        if missing:
            raise PruningError(f"ignored layer(s) {missing} are not in the model: "
                               "check prune.ignore against model.named_modules()")
        layers = transformer_layers(model)
        if not layers:
            raise PruningError(f"{type(model).__name__} has no BERT-style layer (attention.self.query/key/value, "
                               "intermediate.dense, output.dense): use the channel pruner for this model")
        return layers

    def _named(self, model: nn.Module) -> list[tuple[PrunableGroup, _Layer]]:
        out = []
        for layer in self._layers(model):
            p = layer.prefix
            heads = PrunableGroup(f"{p}attention.self", int(layer.attention.num_attention_heads),
                                  (f"{p}attention.self.query", f"{p}attention.self.key", f"{p}attention.self.value",
                                   f"{p}attention.output.dense"),
                                  (f"{p}attention.self.query", f"{p}attention.self.key", f"{p}attention.self.value",
                                   f"{p}attention.output.dense"),
                                  "heads")
            ffn = PrunableGroup(f"{p}intermediate.dense", layer.inter.out_features,
                                (f"{p}intermediate.dense", f"{p}output.dense"),
                                (f"{p}intermediate.dense", f"{p}output.dense"), "ffn")
            for group in (heads, ffn):
                if not any(m in self.ignored for m in group.members):
                    out.append((group, layer))
        return out

    def groups(self, model: nn.Module) -> list[PrunableGroup]:
        return [g for g, _ in self._named(model)]

    # ---------------------------------------------------------------------------------- scoring
    def _unit_scores(self, model: nn.Module, group: PrunableGroup, layer: _Layer, criterion: str,
                     stats: Optional[GradientStats]) -> torch.Tensor:
        names = {m: n for n, m in model.named_modules()}

        def s(lin: nn.Linear, which: str = "weight") -> torch.Tensor:
            return weight_scores(criterion, f"{names[lin]}.{which}", getattr(lin, which), stats)

        if group.kind == "heads":
            d = int(layer.attention.attention_head_size)
            h = int(layer.attention.num_attention_heads)
            rows = sum(s(lin).reshape(h, d, -1).sum((1, 2)) for lin in (layer.query, layer.key, layer.value))
            cols = s(layer.attn_out).reshape(layer.attn_out.out_features, h, d).sum((0, 2))
            return (rows + cols).float()
        return (s(layer.inter).sum(1) + s(layer.out).sum(0)).float()

    def channel_scores(self, model: nn.Module, importance: str = "l2",
                       stats: Optional[GradientStats] = None) -> dict[str, torch.Tensor]:
        """Per-head / per-neuron importance of every group, by group name: what `apply` ranks units by."""
        check_for_heads([importance], error=PruningError)
        with torch.no_grad():
            return {g.name: self._unit_scores(model, g, layer, importance, stats).detach()
                    for g, layer in self._named(model)}

    # ---------------------------------------------------------------------------------- pruning
    def _remove(self, group: PrunableGroup, layer: _Layer, idxs: Sequence[int]) -> None:
        if group.kind == "heads":
            attn = layer.attention
            h, d = int(attn.num_attention_heads), int(attn.attention_head_size)
            drop = set(int(i) for i in idxs)
            kept_heads = [i for i in range(h) if i not in drop]
            if not kept_heads or any(not 0 <= i < h for i in drop):
                raise PruningError(f"group '{group.name}' cannot lose heads {sorted(drop)} of {h}: lower its ratio")
            keep = torch.tensor([i * d + j for i in kept_heads for j in range(d)])
            for lin in (layer.query, layer.key, layer.value):
                _slice_linear(lin, keep, 0)
            _slice_linear(layer.attn_out, keep, 1)
            attn.num_attention_heads = len(kept_heads)
            attn.all_head_size = len(kept_heads) * d
        else:
            n = layer.inter.out_features
            drop = set(int(i) for i in idxs)
            keep = torch.tensor([i for i in range(n) if i not in drop])
            if len(keep) == 0:
                raise PruningError(f"group '{group.name}' cannot lose all {n} neurons: lower its ratio")
            _slice_linear(layer.inter, keep, 0)
            _slice_linear(layer.out, keep, 1)

    def apply(self, model: nn.Module, plan: PrunePlan, stats: Optional[GradientStats] = None,
              reference: Optional[Mapping[str, int]] = None) -> nn.Module:
        self.apply_with_indices(model, plan, stats, reference)
        return model

    def apply_with_indices(self, model: nn.Module, plan: PrunePlan, stats: Optional[GradientStats] = None,
                           reference: Optional[Mapping[str, int]] = None) -> dict[str, list[int]]:
        named = self._named(model)
        known = {g.name for g, _ in named}
        unknown = sorted(set(plan.groups) - known)
        if unknown:
            raise PruningError(f"plan names group(s) {unknown} that the model does not have; "
                               f"known groups: {sorted(known)}")
        check_for_heads([plan.importance], error=PruningError)
        todo = []
        for group, layer in named:
            g = plan.groups.get(group.name)
            if g is None or g.is_mask or g.ratio <= 0.0:
                continue
            step = 1 if group.kind == "heads" else self.round_to
            base = int(reference.get(group.name, group.channels)) if reference else group.channels
            n_remove = group.channels - min(group.channels, kept_channels(base, g.ratio, step))
            if n_remove > 0:
                todo.append((group, layer, n_remove))
        # Score everything first: gradient statistics describe the unpruned graph.
        scores = {group.name: self._unit_scores(model, group, layer, plan.importance, stats)
                  for group, layer, _ in todo} if needs_gradients(plan.importance) or todo else {}
        removed = {}
        for group, layer, n_remove in todo:
            idxs = torch.argsort(scores[group.name], stable=True)[:n_remove].sort().values.tolist()
            self._remove(group, layer, idxs)
            removed[group.name] = idxs
        return removed

    def apply_indices(self, model: nn.Module, removed: Mapping[str, Sequence[int]]) -> nn.Module:
        named = {g.name: (g, layer) for g, layer in self._named(model)}
        for name, idxs in removed.items():
            if name not in named:
                raise PruningError(f"group '{name}' is not in this model: replay indices on the same architecture")
            if idxs:
                self._remove(*named[name], idxs)
        return model


__all__ = ["TransformerPruner", "is_transformer", "transformer_layers"]
