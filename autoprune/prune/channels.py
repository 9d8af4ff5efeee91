"""Structured channel pruning: physically remove conv filters / linear neurons / attention heads, dependency-aware.

torch-pruning's DependencyGraph couples every layer whose channels must shrink together (residual
adds, concatenations, splits, channel shuffles, norms, the next layer's input channels, a class token
or position embedding) into one *group*. A group is named after the first layer (in `named_modules()`
order) whose output channels it prunes (`<name>@<root>` when two groups would share a name, e.g. the
parts of a channel split); a PrunePlan gives one ratio per group name. Kept channel counts are rounded to
the hardware profile's multiple and to what the group's layers need:

- a grouped conv (RegNet / ResNeXt: a fixed group width) keeps its number of groups: the same number of
  channels goes from every conv group, so the kept count is a multiple of the group count;
- a GroupNorm keeps its group count (the kept count stays divisible by it), nn.MultiheadAttention its
  number of heads when its embedding width shrinks (head_dim shrinks); a self-attention one also has a
  heads group (autoprune.prune.mha: losing heads, it becomes its fused twin);
- attention with a fused qkv Linear (timm's layout, MaxViT's; autoprune.prune.attention) is one layer for
  the graph (the residual stream), and its heads are a group of their own, kind "heads", unless its inner
  width is tied to its input width (Swin, MaxViT): then the residual stream goes in multiples of its heads.

A group that cannot be pruned consistently (a grouped conv that sees its channels through a concat or a
reshape, so whole conv groups cannot be kept) is left out, with its reason in `ChannelPruner.excluded`.
Each group knows the largest ratio it can take (`PrunableGroup.max_ratio`, what the search space offers);
a plan asking for more is repaired to the nearest one that can be built, and the repair is reported
(`ChannelPruner.repaired`, `PruneResult.repaired`), not failed.
"""

from __future__ import annotations

import copy
import logging
import math
import weakref
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp

from autoprune import interrupts
from autoprune.errors import PruningError, first_line
from autoprune.plan import GroupPlan, PrunePlan, kept_channels
from autoprune.prune.attention import (FusedAttention, FusedAttentionPruner, fused_attentions, head_scores,
                                       is_fused_attention, is_tied, of_module, opaque_during_trace,
                                       remove_heads)
from autoprune.prune.mha import MhaHeads, self_attention_calls, self_attention_heads
from autoprune.prune.importance import make_importance
from autoprune.prune.criteria import CHANNEL_ONLY
from autoprune.prune.saliency import GradientStats, needs_gradients, weight_scores
from autoprune.weights import shapes

log = logging.getLogger("autoprune")

ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _guard_reshape_mapping() -> None:
    """torch-pruning 1.6 divides by the channel count it infers after a reshape, which is 0 behind a
    channel shuffle's 5-D view (torchvision's ShuffleNetV2): the whole trace then fails. Guarded, such a
    reshape gets no index mapping and is marked opaque; `_structure` excludes the groups that pass it."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_reshape_index_mapping
    if getattr(original, "_autoprune_guard", False):
        return

    def update(graph, node):
        try:
            return original(graph, node)
        except ZeroDivisionError:
            _OPAQUE.add(node.module)

    setattr(update, "_autoprune_guard", True)
    index_mapping.update_reshape_index_mapping = update


def _guard_slice_mapping() -> None:
    """torch-pruning 1.6 reads a slice of a 4-D tensor on dim 1 as a slice of channels. In a channels-last
    model (torchvision's Swin: B, H, W, C) dim 1 is the height, and PatchMerging's x[:, 1::2] then dropped
    half of the channel indices. A slice whose dim-1 size is not the channel count there is spatial: it gets
    no index mapping (channels pass it unchanged) and `_structure` does not read it as a channel slice."""
    from torch_pruning.dependency import index_mapping, shape_infer

    original = index_mapping.update_slice_index_mapping
    if getattr(original, "_autoprune_guard", False):
        return

    def update(graph, node):
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None)
        if sizes is not None and len(sizes) == 4 and getattr(node.module, "dim", None) == 1:
            channels = None
            for n in node.inputs:
                channels = shape_infer.infer_out_channels_recursively(graph, n, [0])
                if channels is not None:
                    break
            if channels is not None and channels != int(sizes[1]):
                _SPATIAL.add(node.module)
                return None
        return original(graph, node)

    setattr(update, "_autoprune_guard", True)
    index_mapping.update_slice_index_mapping = update


_OPAQUE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_SPATIAL: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
_guard_reshape_mapping()
_guard_slice_mapping()


def _all_groups(graph, ignored: Iterable, names: dict, excluded: dict[str, str]):
    """torch-pruning's `get_all_groups`, one root at a time: a root whose coupling torch-pruning cannot
    map (an index past a concat or split it could not size) is excluded with the reason instead of
    ending the whole trace."""
    visited: set = set()
    ignored = set(ignored) | set(graph.IGNORED_LAYERS_IN_TRACING)
    for m in list(graph.module2node):
        if m in ignored or m in visited or not isinstance(m, ROOT_TYPES):
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        try:
            group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except Exception as exc:  # torch-pruning's index mappings raise IndexError and friends
            visited.add(m)
            excluded[names.get(m, str(m))] = (f"torch-pruning cannot map its channels through the graph "
                                              f"({type(exc).__name__}: {first_line(exc)[:120]}): excluded")
            continue
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
                prunable = prunable and dep.target.module not in ignored
        if prunable:
            yield group


@dataclass(frozen=True)
class PrunableGroup:
    """A set of coupled layers pruned together; `channels` is its current width.

    `layers` are the layers whose weights a mask pattern sparsifies, each in exactly one group: for CNNs the
    conv / linear layers whose *output* channels the group removes; `kind` is what the search space's
    per-layer-type pattern choices key on: conv, depthwise, grouped, linear, heads (transformers: heads, ffn).
    `step`: the kept channel count is a multiple of it (conv groups, GroupNorm groups, attention heads);
    `max_ratio`: the largest ratio the group can take (at least one step always stays)."""

    name: str
    channels: int
    members: tuple[str, ...]
    layers: tuple[str, ...] = ()
    kind: str = "conv"
    step: int = 1
    max_ratio: float = 0.95


def layer_kind(modules: Sequence[nn.Module]) -> str:
    """conv | depthwise | grouped | linear, from the layers whose output channels a group removes."""
    convs = [m for m in modules if isinstance(m, nn.modules.conv._ConvNd)]
    if any(m.groups > 1 and m.groups == m.in_channels for m in convs):
        return "depthwise"
    if any(m.groups > 1 for m in convs):
        return "grouped"
    return "conv" if convs else "linear"


def _is_grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups < m.in_channels


@dataclass
class _Group:
    """One torch-pruning group (root layer, its coupling) or one attention's heads (`attention` set)."""

    name: str
    root: Optional[nn.Module]
    members: tuple[str, ...]
    layers: tuple[str, ...]
    kind: str
    step: int = 1        # the removed count is a multiple of it
    chunks: int = 1      # the same number of channels goes from each of `chunks` equal slices (grouped convs)
    protected: frozenset = frozenset()   # channels read by a fixed slice (x[:, :k]): they stay
    attention: Optional[FusedAttention | MhaHeads] = None


class ChannelPruner:
    """Finds prunable groups of a model and applies a PrunePlan to it, in place."""

    def __init__(self, example_input: torch.Tensor, ignored: Sequence[str] = (), round_to: int = 1):
        self.example_input = example_input
        self.ignored = tuple(ignored)
        self.round_to = int(round_to)
        self.excluded: dict[str, str] = {}   # group -> why it is not prunable (last `groups` call)
        self.repaired: dict[str, str] = {}   # group -> how the last applied plan was repaired
        # model -> (its structure when traced, the trace): a model traced again unchanged reuses its trace
        self._traces: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------------------------ tracing
    def _graph(self, model: nn.Module):
        """The dependency graph, groups and excluded groups of `model`, traced once per structure: a model
        is traced again only when a module or a parameter/buffer shape changed (pruning it does)."""
        structure = (tuple(map(id, model.modules())),
                     tuple(shapes(model.state_dict()).items()))
        cached = self._traces.get(model)
        if cached is not None and cached[0] == structure:
            graph, groups, excluded = cached[1]
            return graph, list(groups), dict(excluded)
        graph, groups, excluded = self._trace(model)
        self._traces[model] = (structure, (graph, tuple(groups), dict(excluded)))
        return graph, groups, excluded

    def _trace(self, model: nn.Module):
        names = {module: name for name, module in model.named_modules()}
        missing = [name for name in self.ignored if name not in dict(model.named_modules())]
        if missing:
            raise PruningError(
                f"ignored layer(s) {missing} are not in the model: check prune.ignore against model.named_modules()"
            )
        attentions = fused_attentions(model)
        classes = {type(a.module) for a in attentions}
        # a class is one layer for the graph only when every instance of it has the fused layout
        classes = {c for c in classes if all(is_fused_attention(m) for m in model.modules() if type(m) is c)}
        attentions = [a for a in attentions if type(a.module) in classes]
        tied: set = set()   # attentions whose head dims follow their input width: probed after the trace
        attention_pruner = FusedAttentionPruner(tied)
        was_training = model.training
        model.eval()  # tracing must not update BatchNorm statistics
        try:
            # held: torch-pruning's tracing retries the forward pass after a bare `except:`, which would
            # swallow a Ctrl-C / SIGTERM (autoprune.interrupts); one arriving meanwhile lands just after
            with interrupts.held(), torch.enable_grad(), self_attention_calls(model) as calls, \
                    opaque_during_trace([a.module for a in attentions]) as inputs:
                graph = tp.DependencyGraph().build_dependency(
                    model, example_inputs=self.example_input, verbose=False,
                    customized_pruners={c: attention_pruner for c in classes})
            attentions = [replace(a, tied=is_tied(a, inputs.get(a.module))) for a in attentions]
        except Exception as exc:  # torch-pruning raises many types while tracing
            raise PruningError(f"cannot trace the model's channel dependencies ({type(exc).__name__}: "
                               f"{first_line(exc)[:200]}); add the offending layer to prune.ignore") from exc
        finally:
            model.train(was_training)
        tied.update(a.module for a in attentions if a.tied)
        ignored = [module for name, module in model.named_modules() if name in self.ignored]
        order = {name: i for i, name in enumerate(names.values())}
        groups: list[_Group] = []
        excluded: dict[str, str] = {}
        modules = dict(model.named_modules())
        for group in _all_groups(graph, ignored, names, excluded):
            root = group[0].dep.target.module
            members = tuple(
                dict.fromkeys(names[dep.target.module] for dep, _ in group if dep.target.module in names)
            )
            # Named after its first layer (in model order) whose output channels it removes.
            outputs = [names[dep.target.module] for dep, _ in group
                       if isinstance(dep.target.module, ROOT_TYPES) and graph.is_out_channel_pruning_fn(dep.handler)]
            layers = tuple(sorted(dict.fromkeys(outputs), key=order.__getitem__))
            name = min(outputs, key=order.__getitem__)
            if any(g.name == name for g in groups):
                name = f"{name}@{names[root]}"
            kind = layer_kind([modules[n] for n in layers])
            g = _Group(name, root, members, layers, kind)
            reason = self._structure(graph, group, g, names, tied)
            if reason:
                excluded[name] = reason
            else:
                groups.append(g)
        for att in attentions:
            if att.name in self.ignored or any(m in self.ignored for m in att.members) or att.num_heads < 2:
                continue
            if att.tied:
                excluded[att.name] = ("its head size follows its input width (derived from it, or its output is "
                                      "reshaped to it): its heads stay; the residual stream goes in multiples of "
                                      "num_heads: excluded")
                continue
            groups.append(_Group(att.name, None, att.members, att.members, "heads", attention=att))
        for mha in self_attention_heads(model, calls):
            if mha.name in self.ignored or any(m in self.ignored for m in mha.members):
                continue
            # its in-projection is no module: masks (unstructured, N:M, block) reach out_proj only
            groups.append(_Group(mha.name, None, mha.members, mha.members[1:], "heads", attention=mha))
        return graph, groups, excluded

    @staticmethod
    def _structure(graph, group, g: _Group, names, tied: set) -> str:
        """Fill in the group's step and chunks from the layers it touches; the reason it cannot be pruned
        consistently, or ''."""
        channels = graph.get_out_channels(g.root)
        step, chunks, protected = 1, 1, set()
        for item in group:
            dep, idxs = item.dep, item.idxs
            m = dep.target.module
            if m in _OPAQUE:
                return ("its channels pass a reshape that mixes channels with another dimension (a channel shuffle), "
                        "which torch-pruning cannot map: excluded")
            if isinstance(m, tp.ops._SliceOp) and m in _SPATIAL:
                continue
            if isinstance(m, tp.ops._SliceOp):
                sizes = tuple(m.grad_fn._saved_self_sym_sizes)
                dim = m.dim % len(sizes)
                if dim != (1 if len(sizes) in (2, 4, 5) else len(sizes) - 1):
                    continue  # slices tokens or space, not channels
                start, end = m.start or 0, min(m.end if m.end is not None else sizes[dim], sizes[dim])
                if start == 0 and end >= sizes[dim] and m.step == 1:
                    continue
                if start != 0 or m.step != 1:
                    return (f"a slice [{start}:{end}:{m.step}] with fixed bounds reads these channels: removing any "
                            "would shift what it reads: excluded")
                # x[:, :end]: the channels it reads stay; those past it are free to go
                protected |= {int(r) for i, r in zip(idxs, item.root_idxs) if int(i) < end}
                continue
            out = graph.is_out_channel_pruning_fn(dep.handler)
            try:
                width = graph.get_out_channels(m) if out else graph.get_in_channels(m)
            except Exception:  # an op torch-pruning has no width for
                width = None
            if width is not None and any(not 0 <= int(i) < width for i in idxs):
                return (f"its channels reach '{names.get(m, type(m).__name__)}' through a reshape that torch-pruning "
                        "cannot follow (a channel shuffle or a view that mixes channels and another dimension): "
                        "excluded")
            if isinstance(m, nn.GroupNorm):
                step = math.lcm(step, m.num_groups)
            elif isinstance(m, nn.MultiheadAttention):
                step = math.lcm(step, m.num_heads)
            elif m in tied:
                step = math.lcm(step, of_module(m).num_heads)
            elif _is_grouped(m):
                step, chunks = math.lcm(step, m.groups), math.lcm(chunks, m.groups)
                if width != channels or list(idxs) != list(range(channels)):
                    return (f"grouped conv '{names.get(m, m)}' ({m.groups} groups) sees these channels through a "
                            "concat / split / reshape, so whole conv groups cannot be kept: excluded")
        if channels % chunks or channels < step:
            return f"{channels} channels do not split into {chunks} equal conv groups: excluded"
        if protected and chunks > 1:
            return "a fixed slice reads channels of a grouped conv: excluded"
        g.step, g.chunks, g.protected = step, chunks, frozenset(protected)
        return ""

    def groups(self, model: nn.Module) -> list[PrunableGroup]:
        graph, groups, excluded = self._graph(model)
        out = []
        for g in groups:
            described = self._describe(graph, g)
            if described.max_ratio <= 0.0:
                excluded[g.name] = ("no channel can go without emptying a coupled layer (a slice or a "
                                    "parameter narrower than the group): excluded")
            else:
                out.append(described)
        excluded.update(self._dry_runs(model, [d for d, g in zip(out, groups) if self._touches_attention(graph, g)]))
        out = [d for d in out if d.name not in excluded]
        self.excluded = excluded
        for name, reason in excluded.items():
            log.info("group %s is not pruned: %s", name, reason)
        return out

    def _describe(self, graph, g: _Group) -> PrunableGroup:
        if g.attention is not None:
            h = g.attention.num_heads
            return PrunableGroup(g.name, h, g.members, g.layers, "heads", 1, round((h - 1) / h, 4))
        channels = graph.get_out_channels(g.root)
        step = math.lcm(g.step, max(1, min(self.round_to, channels)))
        most = self._removable(graph, g, channels, channels - max(step, g.step, len(g.protected)))
        return PrunableGroup(g.name, channels, g.members, g.layers, g.kind, g.step,
                             round(max(0.0, most / channels), 4))

    @staticmethod
    def _touches_attention(graph, g: _Group) -> bool:
        if g.attention is not None:
            return True
        group = graph.get_pruning_group(g.root, graph.get_pruner_of_module(g.root).prune_out_channels, [0])
        return any(is_fused_attention(dep.target.module) for dep, _ in group)

    def _dry_runs(self, model: nn.Module, groups: list[PrunableGroup]) -> dict[str, str]:
        """Groups that reach into attention modules are pruned by one step on a copy of the model, which
        must still run: an attention that derives its head size from its input width (Swin's
        `C // num_heads`) cannot lose heads nor residual channels. The groups that fail, with the reason."""
        failed: dict[str, str] = {}
        copy_ = None
        for group in groups:
            if copy_ is None:
                copy_ = copy.deepcopy(model)
            step = 1 if group.kind == "heads" else max(group.step, min(self.round_to, group.channels))
            ratio = min(group.max_ratio, step / group.channels)
            trial = ChannelPruner(self.example_input, self.ignored, 1)
            try:
                trial.apply_with_indices(copy_, PrunePlan({group.name: GroupPlan(ratio)}, "l2"))
            except Exception as exc:
                failed[group.name] = (f"the model no longer runs once it loses {step} of its "
                                      f"{group.channels} {'heads' if group.kind == 'heads' else 'channels'} "
                                      f"({first_line(exc)[-160:]}): excluded")
                copy_ = None  # a fresh copy for the next group
        return failed

    def _removable(self, graph, g: _Group, channels: int, n: int) -> int:
        """The most channels (<= n, a multiple of the group's step) the group can lose, judged on evenly
        spread indices (torch-pruning refuses a removal that would empty a coupled layer)."""
        n -= n % g.step
        while n > 0:
            idxs = self._spread(channels, n, g.chunks, g.protected)
            if graph.check_pruning_group(graph.get_pruning_group(g.root, self._fn(graph, g), idxs)):
                return n
            n -= g.step
        return 0

    @staticmethod
    def _spread(channels: int, n: int, chunks: int, protected=frozenset()) -> list[int]:
        if protected:
            return [i for i in range(channels) if i not in protected][-n:]
        width = channels // chunks
        per = n // chunks
        return [c * width + i for c in range(chunks) for i in range(width - per, width)]

    @staticmethod
    def _fn(graph, g: _Group):
        return graph.get_pruner_of_module(g.root).prune_out_channels

    # ------------------------------------------------------------------------------------ pruning
    def apply(self, model: nn.Module, plan: PrunePlan, stats: Optional[GradientStats] = None,
              reference: Optional[Mapping[str, int]] = None) -> nn.Module:
        """Remove the least important channels of each channel-pattern group named in `plan`; returns
        `model`. Groups with a mask pattern (unstructured, nm, block) are left to the PruningEngine.

        `stats`: gradient statistics for the gradient criteria (taylor, hessian, movement).
        `reference`: group widths the ratios refer to (default: the current widths), so that a schedule
        that prunes in steps ends at exactly the one-shot width: kept = kept_channels(reference, ratio)."""
        self.apply_with_indices(model, plan, stats, reference)
        return model

    def _width(self, graph, g: _Group) -> int:
        return g.attention.num_heads if g.attention is not None else graph.get_out_channels(g.root)

    def apply_with_indices(self, model: nn.Module, plan: PrunePlan, stats: Optional[GradientStats] = None,
                           reference: Optional[Mapping[str, int]] = None) -> dict[str, list[int]]:
        """`apply`, returning the channel indices removed per group (in the group's width before the
        call), which `apply_indices` replays on another copy of the same architecture (rewinding)."""
        graph, groups, excluded = self._graph(model)
        known = {g.name for g in groups}
        unknown = sorted(set(plan.groups) - known)
        if unknown:
            why = "; ".join(f"{n}: {excluded[n]}" for n in unknown if n in excluded)
            raise PruningError(f"plan names group(s) {unknown} that the model does not have"
                               + (f" ({why})" if why else f"; known groups: {sorted(known)}"))
        importance = make_importance(plan.importance, model, stats)
        gradient = needs_gradients(plan.importance)
        self.repaired = {}
        todo = []
        for g in groups:
            gp = plan.groups.get(g.name)
            if gp is None or gp.is_mask or gp.ratio <= 0.0:
                continue
            channels = self._width(graph, g)
            base = int(reference.get(g.name, channels)) if reference else channels
            round_to = 1 if g.attention is not None else self.round_to
            n = channels - min(channels, kept_channels(base, gp.ratio, math.lcm(round_to, g.step)))
            n -= n % g.step
            if n > 0:
                todo.append((g, n, gp.ratio))
        # Gradient criteria score every group before any is pruned (their statistics describe this graph).
        early = {}
        if gradient:
            with torch.no_grad():
                early = {g.name: self._scores(graph, model, g, importance, plan.importance, stats) for g, *_ in todo}
        removed: dict[str, list[int]] = {}
        links = _width_links(model)
        for g, n, ratio in todo:
            scores = early[g.name] if gradient else self._scores(graph, model, g, importance, plan.importance, stats)
            idxs = self._remove(graph, g, scores, n, ratio)
            if idxs:
                removed[g.name] = idxs
        for name, note in self.repaired.items():
            log.info("plan repaired: group %s %s", name, note)
        if removed:
            _sync_splits(model)
            _sync_widths(links)
            self._check_runs(model, list(removed))
        return removed

    def channel_scores(self, model: nn.Module, importance: str = "l2",
                       stats: Optional[GradientStats] = None) -> dict[str, torch.Tensor]:
        """Per-channel importance of every group at its current width, by group name: what `apply` ranks
        channels by (the lowest go first). Gradient criteria need `stats`."""
        graph, groups, _ = self._graph(model)
        criterion = make_importance(importance, model, stats)
        with torch.no_grad():
            return {g.name: self._scores(graph, model, g, criterion, importance, stats).detach().float()
                    for g in groups}

    def _scores(self, graph, model: nn.Module, g: _Group, importance, criterion: str,
                stats: Optional[GradientStats]) -> torch.Tensor:
        if g.attention is not None:
            crit = "l2" if criterion in CHANNEL_ONLY else criterion  # heads: single weights are scored
            return head_scores(g.attention, lambda name, w: weight_scores(crit, name, w, stats))
        channels = graph.get_out_channels(g.root)
        with torch.no_grad():
            scores = importance(graph.get_pruning_group(g.root, self._fn(graph, g), list(range(channels))))
        if scores is None:
            raise PruningError(f"importance '{criterion}' cannot score group '{g.name}' (it has no layer "
                               "that criterion reads, e.g. no BatchNorm for bn_scale): choose prune.importance=l2")
        if len(scores) != channels:
            raise PruningError(f"importance '{criterion}' scored {len(scores)} channels of group '{g.name}' "
                               f"({channels} wide): choose prune.importance=l2 or exclude '{g.name}'")
        return scores

    def _pick(self, scores: torch.Tensor, n: int, chunks: int) -> list[int]:
        """The `n` least important channels; with chunks, n / chunks from each equal slice."""
        if chunks == 1:
            return torch.argsort(scores, stable=True)[:n].sort().values.tolist()
        width = len(scores) // chunks
        rows = torch.argsort(scores.view(chunks, width), dim=1, stable=True)[:, : n // chunks]
        return (rows + torch.arange(chunks).view(-1, 1) * width).flatten().sort().values.tolist()

    def _remove(self, graph, g: _Group, scores: torch.Tensor, n: int, ratio: float) -> list[int]:
        """Remove the n least important channels (fewer when the group cannot lose n: recorded in
        `self.repaired`); the indices removed."""
        if g.attention is not None:
            idxs = self._pick(scores, n, 1)
            remove_heads(_heads(g.attention), idxs)
            return idxs
        wanted = n
        if g.protected:
            scores = scores.clone().float()
            scores[sorted(g.protected)] = float("inf")
            n = min(n, len(scores) - len(g.protected))
        while n > 0:
            idxs = self._pick(scores, n, g.chunks)
            group = graph.get_pruning_group(g.root, self._fn(graph, g), idxs)
            if graph.check_pruning_group(group):
                if n != wanted:
                    self.repaired[g.name] = (f"ratio {ratio:g} asks for {wanted} of {len(scores)} channels; "
                                             f"{n} can go (a fixed slice reads the others, or a coupled layer "
                                             "would be emptied)")
                group.prune()
                return idxs
            n -= g.step
        self.repaired[g.name] = f"ratio {ratio:g}: no channel can go without emptying a coupled layer; left whole"
        return []

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
        graph, groups, _ = self._graph(model)
        by_name = {g.name: g for g in groups}
        links = _width_links(model)
        for name, idxs in removed.items():
            if name not in by_name:
                raise PruningError(f"group '{name}' is not in this model: replay indices on the same architecture")
            if not idxs:
                continue
            g = by_name[name]
            if g.attention is not None:
                remove_heads(_heads(g.attention), list(idxs))
                continue
            group = graph.get_pruning_group(g.root, self._fn(graph, g), list(idxs))
            if not graph.check_pruning_group(group):
                raise PruningError(f"group '{name}' cannot lose {len(idxs)} channels: lower its ratio or exclude "
                                   f"'{name}' in the search space")
            group.prune()
        _sync_splits(model)
        _sync_widths(links)
        return model


def _heads(attention) -> FusedAttention:
    """The fused attention whose heads go: an nn.MultiheadAttention is first replaced by its fused twin."""
    return attention.fuse() if isinstance(attention, MhaHeads) else attention


WIDTH_ATTRS = ("hidden_dim", "embed_dim", "embedding_dim", "d_model")


def _width_links(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(module, attribute, layer): an int width attribute the module's forward reads (torchvision's ViT
    reshapes its patches to `self.hidden_dim`) that equals the output width of exactly one of its own
    conv / linear children (`conv_proj`): after pruning, the attribute follows that layer."""
    links: list[tuple[nn.Module, str, nn.Module]] = []
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):   # torch-pruning updates its embed_dim itself
            continue
        for attr in WIDTH_ATTRS:
            value = getattr(module, attr, None)
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            layers = [c for c in module.children() if isinstance(c, ROOT_TYPES) and _out_width(c) == value]
            if len(layers) == 1:
                links.append((module, attr, layers[0]))
    return links


def _out_width(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    assert isinstance(layer, nn.modules.conv._ConvNd)   # ROOT_TYPES: convolutions and linears
    return layer.out_channels


def _sync_widths(links: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for module, attr, layer in links:
        setattr(module, attr, _out_width(layer))


def _sync_splits(model: nn.Module) -> None:
    """A module that splits its input by a list of sizes it holds (`splits`: MixNet's mixed-kernel
    depthwise convs, one conv per split) gets the sizes its convs now take."""
    for module in model.modules():
        for attr in ("splits", "split_sizes"):
            sizes = getattr(module, attr, None)
            if not (isinstance(sizes, (list, tuple)) and sizes and all(isinstance(v, int) for v in sizes)):
                continue
            convs = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]
            if len(convs) == len(sizes):
                setattr(module, attr, type(sizes)(c.in_channels for c in convs))


# Ops that carry a layer's output channels to the model's output unchanged in meaning (activations,
# pooling, reshapes, dropout, normalisation without weights, indexing): the output walk passes them.
def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Names of the layers whose output *is* the model's output (the classifier head), found from the
    graph's output whatever their type (a Linear, a 1x1 conv before pooling as in SqueezeNet, attention
    pooling): walking back from each output through the ops after it (activations, pooling, flatten,
    indexing...), the first layers with weights met. Their output channels define the task's outputs
    and are never pruned."""
    names = {module: name for name, module in model.named_modules()}
    produced: dict[object, str] = {}   # grad_fn of a layer's output -> layer name
    kept: list[object] = []            # outputs kept alive so grad_fns stay valid

    def hook(module, _inputs, out):
        t = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(t, torch.Tensor) and t.grad_fn is not None:
            produced[t.grad_fn] = names[module]
            kept.append(t)

    hooks = [module.register_forward_hook(hook) for module in model.modules()
             if isinstance(module, (*ROOT_TYPES, nn.MultiheadAttention)) or is_fused_attention(module)]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    outputs = out if isinstance(out, (tuple, list)) else [out]
    found: list[str] = []
    stack = [o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    seen = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in produced:
            found.append(produced[fn])
            continue
        stack.extend(f for f, _ in getattr(fn, "next_functions", ()) if f is not None
                     and "AccumulateGrad" not in type(f).__name__)
    # an outer module's output is also its last inner layer's: report the outermost only
    order = {n: i for i, n in enumerate(names.values())}
    found = sorted(dict.fromkeys(found), key=order.__getitem__)
    return [n for n in found if not any(n.startswith(f"{o}.") for o in found if o != n)]
