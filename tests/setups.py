"""Shared test setups on small real models."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autoprune.calibrate import layer_specs
from autoprune.hw.predictor import LayerSpec
from autoprune.prune import ChannelPruner, output_layers
from autoprune.search.space import SearchSpace, build_space
from autoprune.tasks.models import resnet_small


@dataclass(frozen=True)
class PrunableResnet:
    """A seeded ResNet (16/32/64 channels, 24x24 input), its pruner (round to 8), a ratio space 0..0.75 in
    steps of 1/8, its groups' widths and its layers' shapes."""
    model: torch.nn.Module
    pruner: ChannelPruner
    space: SearchSpace
    widths: dict[str, int]
    layers: list[LayerSpec]


def prunable_resnet() -> PrunableResnet:
    torch.manual_seed(0)
    model = resnet_small(widths=(16, 32, 64)).eval()
    x = torch.randn(1, 1, 24, 24)
    pruner = ChannelPruner(x, output_layers(model, x), 8)
    groups = pruner.groups(model)
    space = build_space({"ratio": {"low": 0.0, "high": 0.75, "step": 0.125}}, groups)
    return PrunableResnet(model, pruner, space, {g.name: g.channels for g in groups}, layer_specs(model, pruner))
