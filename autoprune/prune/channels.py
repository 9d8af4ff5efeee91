"""Structured channel pruning: physically remove conv filters / linear neurons, dependency-aware.

torch-pruning's DependencyGraph couples every layer whose channels must shrink together (residual
adds, BatchNorm, the next layer's input channels) into one *group*. A group is named after the first
layer (in `named_modules()` order) whose output channels it prunes; a PrunePlan gives one
ratio per group name. Kept channel counts are rounded to the hardware profile's multiple.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from autoprune.errors import PruningError, first_line
from autoprune.plan import PrunePlan
from autoprune.prune.importance import make_importance
from autoprune.prune.saliency import GradientStats, needs_gradients

ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class PrunableGroup:
    """A set of coupled layers pruned together; `channels` is its current width.

    `layers` are the layers whose weights a mask pattern sparsifies, each in exactly one group: for CNNs the
    conv / linear layers whose *output* channels the group removes; `kind` is what the search space's
    per-layer-type pattern choices key on: conv, depthwise, grouped, linear (transformers: heads, ffn)."""

    name: str
    channels: int
    members: tuple[str, ...]
    layers: tuple[str, ...] = ()
    kind: str = "conv"


def layer_kind(modules: Sequence[nn.Module]) -> str:
    """conv | depthwise | grouped | linear, from the layers whose output channels a group removes."""
    convs = [m for m in modules if isinstance(m, nn.modules.conv._ConvNd)]
    if any(m.groups > 1 and m.groups == m.in_channels for m in convs):
        return "depthwise"
    if any(m.groups > 1 for m in convs):
        return "grouped"
    return "conv" if convs else "linear"


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
            groups.append((min(outputs, key=order.__getitem__), root, group, members,
                           tuple(sorted(dict.fromkeys(outputs), key=order.__getitem__))))
        return graph, groups

    def groups(self, model: nn.Module) -> list[PrunableGroup]:
        graph, groups = self._graph(model)
        modules = dict(model.named_modules())
        return [PrunableGroup(name, graph.get_out_channels(root), members, layers,
                              layer_kind([modules[n] for n in layers]))
                for name, root, _, members, layers in groups]

    def apply(self, model: nn.Module, plan: PrunePlan, stats: Optional[GradientStats] = None,
              reference: Optional[Mapping[str, int]] = None) -> nn.Module:
        """Remove the least important channels of each channel-pattern group named in `plan`; returns
        `model`. Groups with a mask pattern (unstructured, nm, block) are left to the PruningEngine.

        `stats`: gradient statistics for the gradient criteria (taylor, hessian, movement).
        `reference`: group widths the ratios refer to (default: the current widths), so that a schedule
        that prunes in steps ends at exactly the one-shot width: kept = kept_channels(reference, ratio)."""
        self.apply_with_indices(model, plan, stats, reference)
        return model

    def apply_with_indices(self, model: nn.Module, plan: PrunePlan, stats: Optional[GradientStats] = None,
                           reference: Optional[Mapping[str, int]] = None) -> dict[str, list[int]]:
        """`apply`, returning the channel indices removed per group (in the group's width before the
        call), which `apply_indices` replays on another copy of the same architecture (rewinding)."""
        graph, groups = self._graph(model)
        known = {name for name, *_ in groups}
        unknown = sorted(set(plan.groups) - known)
        if unknown:
            raise PruningError(
                f"plan names group(s) {unknown} that the model does not have; known groups: {sorted(known)}"
            )
        importance = make_importance(plan.importance, model, stats)
        gradient = needs_gradients(plan.importance)
        todo = []
        for name, root, group, _, _ in groups:
            g = plan.groups.get(name)
            if g is None or g.is_mask or g.ratio <= 0.0:
                continue
            channels = graph.get_out_channels(root)
            base = int(reference.get(name, channels)) if reference else channels
            n_remove = channels - min(channels, kept_channels(base, g.ratio, self.round_to))
            if n_remove > 0:
                todo.append((name, root, group, n_remove))
        # Gradient criteria score every group before any is pruned (their statistics describe this graph).
        early = {}
        if gradient:
            with torch.no_grad():
                early = {name: importance(group) for name, _, group, _ in todo}
        removed: dict[str, list[int]] = {}
        for name, root, group, n_remove in todo:
            if gradient:
                scores = early[name]
            else:
                with torch.no_grad():
                    scores = importance(group)
            if scores is None:
                raise PruningError(f"importance '{plan.importance}' cannot score group '{name}' (it has no layer "
                                   "that criterion reads, e.g. no BatchNorm for bn_scale): choose prune.importance=l2")
            idxs = torch.argsort(scores, stable=True)[:n_remove].sort().values.tolist()
            self._remove(graph, root, name, idxs)
            removed[name] = idxs
        if removed:
            self._check_runs(model, list(removed))
        return removed

    def _check_runs(self, model: nn.Module, pruned: list[str]) -> None:
        """A pruned model must still run: a layer torch-pruning could not follow (a hard-coded reshape,
        a raw parameter sized by the channel count) fails here, named, instead of later in training."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(self.example_input)
        except Exception as exc:
            first = first_line(exc)
            raise PruningError(f"after removing channels of group(s) {pruned} the model no longer runs "
                               f"({type(exc).__name__}: {first[:300]}): a layer there cannot be pruned safely; "
                               f"exclude the group in the search space (exclude: {pruned[:1]}) or add the layer to "
                               "prune.ignore") from None
        finally:
            model.train(was_training)

    def apply_indices(self, model: nn.Module, removed: Mapping[str, Sequence[int]]) -> nn.Module:
        """Remove exactly the given channel indices per group (from `apply_with_indices` on a twin)."""
        graph, groups = self._graph(model)
        by_name = {name: root for name, root, *_ in groups}
        for name, idxs in removed.items():
            if name not in by_name:
                raise PruningError(f"group '{name}' is not in this model: replay indices on the same architecture")
            if idxs:
                self._remove(graph, by_name[name], name, list(idxs))
        return model

    @staticmethod
    def _remove(graph, root: nn.Module, name: str, idxs: list[int]) -> None:
        pruner = graph.get_pruner_of_module(root)
        prune_group = graph.get_pruning_group(root, pruner.prune_out_channels, idxs)
        if not graph.check_pruning_group(prune_group):
            raise PruningError(f"group '{name}' cannot lose {len(idxs)} channels: lower its ratio or exclude "
                               f"'{name}' in the search space")
        prune_group.prune()


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
