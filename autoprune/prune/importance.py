"""Channel-importance criteria, by name, for structured pruning (torch-pruning group importances).

    l2, l1     group L2 / L1 magnitude of all weights coupled to a channel (l2 is the default)
    bn_scale   network slimming: |gamma| of the group's BatchNorm layers
    fpgm       filters closest to the geometric median go first (He et al. 2019)
    taylor     first-order Taylor |w * g|, summed over the group (needs gradients)
    hessian    OBD-style 0.5 * w^2 * diag(H), H ~ empirical Fisher, summed over the group (needs gradients)
    movement   -w * sum(g), summed over the group: channels moving towards zero go first (needs gradients)
    random     control: channels removed at random (seeded by the caller through torch's RNG)

The gradient criteria score every weight with autoprune.prune.saliency and sum the scores of each
channel over all coupled layers (outputs and inputs of convs / linears, BatchNorm scales), like the
magnitude criteria do with |w|^p.
"""

from __future__ import annotations

from typing import Callable, Optional, cast

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner import function

from autoprune.errors import ConfigError
from autoprune.prune.criteria import GRADIENT_CRITERIA
from autoprune.prune.saliency import GradientStats, weight_scores

IMPORTANCES: dict[str, Optional[Callable[[], tp.importance.Importance]]] = {
    # Group L2 norm of all weights coupled to a channel (the default).
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    # Network slimming: |gamma| of the BatchNorm layers in the group.
    "bn_scale": lambda: tp.importance.GroupMagnitudeImportance(
        p=1, target_types=[nn.modules.batchnorm._BatchNorm]
    ),
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),
    # Control: channels removed at random (seeded by the caller through torch's RNG).
    "random": lambda: tp.importance.RandomImportance(),
    # Gradient criteria: built with make_importance(name, model, stats) (they need the model's gradients).
    "taylor": None,
    "hessian": None,
    "movement": None,
}


class ScoreImportance(tp.importance.Importance):
    """Group importance = per-channel sum of per-weight saliency scores over the group's layers."""

    def __init__(self, criterion: str, model: nn.Module, stats: Optional[GradientStats]):
        self.criterion = criterion
        self.stats = stats
        self.names = {module: name for name, module in model.named_modules()}

    def _scores(self, layer: nn.Module) -> torch.Tensor:
        prefix = self.names[layer]
        return weight_scores(self.criterion, f"{prefix}.weight" if prefix else "weight",
                             cast(torch.Tensor, layer.weight), self.stats)

    @torch.no_grad()
    def __call__(self, group) -> Optional[torch.Tensor]:
        total: Optional[torch.Tensor] = None
        for i, (dep, idxs) in enumerate(group):
            layer, fn, root = dep.target.module, dep.handler, group[i].root_idxs
            if any(r is None for r in root) or layer not in self.names or getattr(layer, "weight", None) is None:
                continue
            if fn in (function.prune_conv_out_channels, function.prune_linear_out_channels):
                s = self._scores(layer)
                s = s.transpose(0, 1) if getattr(layer, "transposed", False) else s
                local = s[idxs].flatten(1).sum(1)
            elif fn in (function.prune_conv_in_channels, function.prune_linear_in_channels):
                s = self._scores(layer)
                s = s.flatten(1) if getattr(layer, "transposed", False) else s.transpose(0, 1).flatten(1)
                local = s.sum(1)
                if fn == function.prune_conv_in_channels and layer.groups not in (1, layer.in_channels):
                    local = local.repeat(layer.groups)
                local = local[idxs]
            elif fn == function.prune_batchnorm_out_channels and layer.affine:
                local = self._scores(layer)[idxs]
            else:
                continue
            total = torch.zeros(len(root), dtype=torch.float64) if total is None else total
            total.scatter_add_(0, torch.tensor(root), local.double())
        return None if total is None else total.float()


def make_importance(name: str, model: Optional[nn.Module] = None,
                    stats: Optional[GradientStats] = None) -> tp.importance.Importance:
    """The criterion `name`; gradient criteria need the model and its gradient statistics."""
    if name not in IMPORTANCES:
        raise ConfigError(
            f"unknown importance '{name}': set prune.importance to one of {sorted(IMPORTANCES)}"
        )
    if name in GRADIENT_CRITERIA:
        if model is None:
            raise ConfigError(f"importance '{name}' needs gradients: build it with make_importance(name, model, stats)")
        return ScoreImportance(name, model, stats)
    factory = IMPORTANCES[name]
    assert factory is not None, f"{name} is a gradient criterion"   # GRADIENT_CRITERIA: handled above
    return factory()
