"""Pruning engine: find a model's prunable groups and apply a PrunePlan (any pattern) to a copy of it."""

from autoprune.prune.attention import fused_attentions
from autoprune.prune.channels import ChannelPruner, PrunableGroup, kept_channels, output_layers
from autoprune.prune.engine import MaskSet, PruneResult, PruningEngine, make_pruner
from autoprune.prune.importance import IMPORTANCES, make_importance
from autoprune.prune.saliency import GradientStats, collect_gradients, needs_gradients
from autoprune.prune.transformer import TransformerPruner, is_transformer

__all__ = ["ChannelPruner", "GradientStats", "IMPORTANCES", "MaskSet", "PrunableGroup", "PruneResult", "PruningEngine",
           "TransformerPruner", "collect_gradients", "fused_attentions", "is_transformer", "kept_channels", "make_importance",
           "make_pruner", "needs_gradients", "output_layers"]
