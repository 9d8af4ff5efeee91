"""Sparsity-inducing regularisers for a pre-pruning phase.

    bn_l1        sum |gamma| over every BatchNorm layer (network slimming, Liu et al. 2017): pushes whole
                 channels' scales to zero, so bn_scale (or any magnitude criterion) finds them afterwards
    group_lasso  sum over every prunable output channel / neuron of the L2 norm of its weights (the rows of
                 the layers whose outputs the prunable groups own): shrinks whole channels together
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from autoprune.errors import ConfigError


def bn_l1(model: nn.Module) -> torch.Tensor:
    terms = [m.weight.abs().sum() for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if not terms:
        raise ConfigError(f"recover.regulariser.kind=bn_l1 needs BatchNorm layers and {type(model).__name__} has "
                          "none: use group_lasso")
    return torch.stack(terms).sum()


def group_lasso(model: nn.Module, layers: Sequence[str]) -> torch.Tensor:
    modules = dict(model.named_modules())
    # an nn.MultiheadAttention (a heads group's first member) holds its rows in in_proj_weight
    weights = [getattr(modules[name], "weight", getattr(modules[name], "in_proj_weight", None))
               for name in layers if name in modules]
    terms = [w.flatten(1).norm(dim=1).sum() for w in weights if isinstance(w, torch.Tensor)]
    if not terms:
        raise ConfigError("recover.regulariser.kind=group_lasso found no prunable layer to regularise")
    return torch.stack(terms).sum()


def make_penalty(kind: str, weight: float, layers: Sequence[str] = ()) -> Callable[[nn.Module], torch.Tensor]:
    """loss term `weight * R(model)` for regulariser `kind` (bn_l1 | group_lasso)."""
    if kind == "bn_l1":
        return lambda model: weight * bn_l1(model)
    if kind == "group_lasso":
        layers = tuple(layers)
        return lambda model: weight * group_lasso(model, layers)
    raise ConfigError(f"unknown regulariser '{kind}': choose bn_l1 or group_lasso")
