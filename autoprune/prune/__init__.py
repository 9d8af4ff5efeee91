"""Pruning engine: find a model's prunable groups and apply a PrunePlan to a copy of it."""

from autoprune.prune.channels import ChannelPruner, PrunableGroup, kept_channels, output_layers
from autoprune.prune.importance import IMPORTANCES, make_importance

__all__ = ["ChannelPruner", "PrunableGroup", "kept_channels", "output_layers", "IMPORTANCES", "make_importance"]
