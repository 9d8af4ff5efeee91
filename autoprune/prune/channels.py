"""Structured channel pruning: physically remove conv filters / linear neurons, dependency-aware.

torch-pruning's DependencyGraph couples every layer whose channels must shrink together (residual
adds, BatchNorm, the next layer's input channels) into one *group*. A group is named after the first
layer (in `named_modules()` order) whose output channels it prunes; a PrunePlan gives one
ratio per group name. Kept channel counts are rounded to the hardware profile's multiple.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from autoprune.errors import PruningError
from autoprune.plan import PrunePlan
from autoprune.prune.importance import make_importance

ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class PrunableGroup:
    """A set of coupled layers pruned together; `channels` is its current width."""

    name: str
    channels: int
    members: tuple[str, ...]


def kept_channels(channels: int, ratio: float, round_to: int = 1) -> int:
    """Channels left after removing `ratio` of `channels`, rounded to the nearest multiple of
    `round_to` (half up) and never below one multiple nor above `channels`."""
    step = max(1, min(round_to, channels))
    kept = math.floor(channels * (1.0 - ratio) / step + 0.5) * step
    return int(min(channels, max(step, kept)))


class ChannelPruner:
    """Finds prunable groups of a model and applies a PrunePlan to it, in place."""

    def __init__(self, example_input: torch.Tensor, ignored: Sequence[str] = (), round_to: int = 1):
        self.example_input = example_input
        self.ignored = tuple(ignored)
        self.round_to = int(round_to)

    def _graph(self, model: nn.Module):
        names = {module: name for name, module in model.named_modules()}
        missing = [name for name in self.ignored if name not in dict(model.named_modules())]
        if missing:
            raise PruningError(
                f"ignored layer(s) {missing} are not in the model: check prune.ignore against model.named_modules()"
            )
        was_training = model.training
        model.eval()  # tracing must not update BatchNorm statistics
        try:
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=self.example_input)
        except Exception as exc:  # torch-pruning raises many types while tracing
            raise PruningError(f"cannot trace the model's channel dependencies ({exc}); "
                               "add the offending layer to prune.ignore") from exc
        finally:
            model.train(was_training)
        ignored = [module for name, module in model.named_modules() if name in self.ignored]
        order = {name: i for i, name in enumerate(names.values())}
        groups = []
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
            root = group[0].dep.target.module
            members = tuple(
                dict.fromkeys(names[dep.target.module] for dep, _ in group if dep.target.module in names)
            )
            # Named after its first layer (in model order) whose output channels it removes.
            outputs = [names[dep.target.module] for dep, _ in group
                       if isinstance(dep.target.module, ROOT_TYPES) and graph.is_out_channel_pruning_fn(dep.handler)]
            groups.append((min(outputs, key=order.__getitem__), root, group, members))
        return graph, groups

    def groups(self, model: nn.Module) -> list[PrunableGroup]:
        graph, groups = self._graph(model)
        return [PrunableGroup(name, graph.get_out_channels(root), members) for name, root, _, members in groups]

    def apply(self, model: nn.Module, plan: PrunePlan) -> nn.Module:
        """Remove the least important channels of each group named in `plan`; returns `model`."""
        graph, groups = self._graph(model)
        known = {name for name, *_ in groups}
        unknown = sorted(set(plan.groups) - known)
        if unknown:
            raise PruningError(
                f"plan names group(s) {unknown} that the model does not have; known groups: {sorted(known)}"
            )
        importance = make_importance(plan.importance)
        for name, root, group, _ in groups:
            ratio = plan.ratio(name)
            if ratio <= 0.0:
                continue
            channels = graph.get_out_channels(root)
            n_remove = channels - kept_channels(channels, ratio, self.round_to)
            if n_remove <= 0:
                continue
            with torch.no_grad():
                scores = importance(group)
            if scores is None:
                raise PruningError(f"importance '{plan.importance}' cannot score group '{name}': choose prune.importance=l2")
            idxs = torch.argsort(scores, stable=True)[:n_remove].sort().values.tolist()
            pruner = graph.get_pruner_of_module(root)
            prune_group = graph.get_pruning_group(root, pruner.prune_out_channels, idxs)
            if not graph.check_pruning_group(prune_group):
                raise PruningError(f"group '{name}' cannot lose {n_remove} channels: lower its ratio")
            prune_group.prune()
        return model


def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the layers whose output *is* the model's output (the classifier head): their
    output channels define the task's outputs and are never pruned."""
    names = {module: name for name, module in model.named_modules()}
    produced: dict[int, tuple[str, object]] = {}  # keeps each output alive so ids are never reused
    hooks = [
        module.register_forward_hook(lambda m, _i, out: produced.__setitem__(id(out), (names[m], out)))
        for module in model.modules()
        if isinstance(module, ROOT_TYPES)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example_input)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    outputs = out if isinstance(out, (tuple, list)) else [out]
    return [produced[id(o)][0] for o in outputs if id(o) in produced]
