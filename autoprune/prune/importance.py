"""Channel-importance criteria, by name, for structured pruning (torch-pruning's group importances)."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn
import torch_pruning as tp

from autoprune.errors import ConfigError

IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
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
}


def make_importance(name: str) -> tp.importance.Importance:
    try:
        return IMPORTANCES[name]()
    except KeyError:
        raise ConfigError(
            f"unknown importance '{name}': set prune.importance to one of {sorted(IMPORTANCES)}"
        ) from None
