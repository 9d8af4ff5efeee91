"""PruningEngine: applies a whole PrunePlan, every pattern, to a model.

1. Channel-pattern groups are removed physically by the structural pruner: ChannelPruner (convs /
   linears, torch-pruning's dependency graph) or TransformerPruner (attention heads and FFN neurons of
   BERT-style encoders), picked by `make_pruner`.
2. Mask-pattern groups (unstructured, nm, block) then get keep-masks on the weights of their layers
   (the conv / linear layers whose outputs the group owns), computed on the already narrowed model, and
   the masked weights are zeroed. The masks come back in a MaskSet: re-apply it after every optimizer
   step (`MaskSet.apply`) or the zeros grow back.

Importance: `plan.importance` for both; the gradient criteria (taylor, hessian, movement) use gradient
statistics given by the caller (collected during fine-tuning) or collected here on a few calibration
batches. A layer a pattern cannot tile (N:M needs an input dimension divisible by M, block needs its
block shape to divide the weight's 2-D view: e.g. depthwise convs, a 3-channel stem) is left dense and
reported in `PruneResult.skipped` with the reason (and logged once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union, cast

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from autoprune.errors import ConfigError, PruningError
from autoprune.plan import PrunePlan
from autoprune.prune.channels import ChannelPruner, PrunableGroup
from autoprune.prune.criteria import check_for_masks
from autoprune.prune.saliency import GradientStats, collect_gradients, needs_gradients, weight_scores
from autoprune.prune.sparsity import block_mask, global_unstructured_masks, nm_mask, tiles, unstructured_mask
from autoprune.prune.transformer import TransformerPruner, is_transformer

log = logging.getLogger("autoprune")

StructuralPruner = Union[ChannelPruner, TransformerPruner]
SCOPES = ("layer", "global")


def make_pruner(model: nn.Module, example_input: torch.Tensor, ignored=(), round_to: int = 1) -> StructuralPruner:
    """TransformerPruner for models with BERT-style layers (heads / FFN neurons), ChannelPruner otherwise."""
    cls = TransformerPruner if is_transformer(model) else ChannelPruner
    return cls(example_input, ignored, round_to)


class MaskSet:
    """Keep-masks (True = keep) on layers' weights, by layer name."""

    def __init__(self) -> None:
        self.masks: dict[str, tuple[Any, torch.Tensor]] = {}   # name -> (layer with a `weight`, keep mask)

    def set(self, name: str, module: nn.Module, keep: torch.Tensor) -> None:
        if keep.shape != module.weight.shape:
            raise PruningError(f"mask of shape {tuple(keep.shape)} does not fit layer '{name}' "
                               f"{tuple(cast(torch.Tensor, module.weight).shape)}")
        self.masks[name] = (module, keep.to(torch.bool))

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked weight (call after each optimizer step)."""
        for module, keep in self.masks.values():
            if module.weight.shape != keep.shape:
                raise PruningError("a masked layer changed shape: rebuild the masks after removing channels")
            module.weight.mul_(keep)

    def rebind(self, model: nn.Module) -> "MaskSet":
        """The same masks on another copy of the same architecture (e.g. rewound weights)."""
        modules = dict(model.named_modules())
        out = MaskSet()
        for name, (_, keep) in self.masks.items():
            out.set(name, modules[name], keep.clone())
        return out

    def __len__(self) -> int:
        return len(self.masks)

    def zeros(self) -> int:
        return sum(int((~keep).sum()) for _, keep in self.masks.values())


@dataclass
class PruneResult:
    masks: MaskSet
    removed: dict[str, list[int]] = field(default_factory=dict)   # channel indices removed per group
    skipped: dict[str, str] = field(default_factory=dict)          # layer -> why a pattern left it dense
    repaired: dict[str, str] = field(default_factory=dict)         # group -> how its ratio was lowered to fit


class PruningEngine:
    """Applies plans of any pattern. `data` (the training split) feeds gradient criteria's calibration."""

    def __init__(self, structural: StructuralPruner, data: Optional[Dataset] = None, unstructured_scope: str = "layer",
                 calibration_batches: int = 4, batch_size: int = 64, seed: int = 0):
        if unstructured_scope not in SCOPES:
            raise ConfigError(f"prune.unstructured_scope='{unstructured_scope}': choose layer or global")
        self.structural = structural
        self.data = data
        self.unstructured_scope = unstructured_scope
        self.calibration_batches = int(calibration_batches)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._logged: set[str] = set()

    # The structural pruner's interface, so the engine can stand in for it.
    @property
    def example_input(self) -> torch.Tensor:
        return self.structural.example_input

    @property
    def round_to(self) -> int:
        return self.structural.round_to

    @property
    def ignored(self) -> tuple[str, ...]:
        return self.structural.ignored

    def groups(self, model: nn.Module) -> list[PrunableGroup]:
        return self.structural.groups(model)

    def gradients(self, model: nn.Module) -> GradientStats:
        if self.data is None:
            raise ConfigError("gradient criteria (taylor, hessian, movement) need training data: "
                              "build the PruningEngine with data=the training split")
        return collect_gradients(model, self.data, self.calibration_batches, self.batch_size, self.seed)

    # ------------------------------------------------------------------------------------ apply
    def apply(self, model: nn.Module, plan: PrunePlan, stats: Optional[GradientStats] = None,
              reference: Optional[Mapping[str, int]] = None) -> PruneResult:
        """Prune `model` in place: channel groups physically, then masks. `reference`: group widths the
        channel ratios refer to (schedules pruning in steps); `stats`: gradient statistics to use instead
        of collecting them on calibration batches."""
        gradient = needs_gradients(plan.importance)
        channel, mask = plan.channel_part(), plan.mask_part()
        removed: dict[str, list[int]] = {}
        if channel.patterns:
            if gradient and stats is None:
                stats = self.gradients(model)
            removed = self.structural.apply_with_indices(model, channel, stats, reference)
        repaired = dict(getattr(self.structural, "repaired", {})) if channel.patterns else {}
        for name, note in repaired.items():
            if name not in self._logged:
                self._logged.add(name)
                log.warning("plan repaired to the nearest one that can be built: group %s %s", name, note)
        result = PruneResult(MaskSet(), removed, repaired=repaired)
        if mask.patterns:
            check_for_masks([plan.importance], mask.patterns)
            if gradient and (stats is None or any(removed.values())):  # narrowed layers: fresh gradients
                stats = self.gradients(model)
            self._masks(model, mask, stats, result)
            result.masks.apply()
        return result

    def _masks(self, model: nn.Module, plan: PrunePlan, stats: Optional[GradientStats], result: PruneResult) -> None:
        modules = dict(model.named_modules())
        groups = {g.name: g for g in self.groups(model)}
        unknown = sorted(set(plan.groups) - set(groups))
        if unknown:
            raise PruningError(f"plan names group(s) {unknown} that the model does not have; "
                               f"known groups: {sorted(groups)}")
        pooled = []  # unstructured layers ranked together (global scope)
        for name, g in plan.groups.items():
            if not g.active:
                continue
            for layer_name in groups[name].layers:
                layer = modules[layer_name]
                weight = layer.weight
                scores = weight_scores(plan.importance, f"{layer_name}.weight", weight, stats)
                if g.pattern == "unstructured":
                    if self.unstructured_scope == "global":
                        pooled.append((layer_name, layer, scores, round(g.ratio * weight.numel())))
                    else:
                        result.masks.set(layer_name, layer, unstructured_mask(weight, g.ratio, scores=scores))
                    continue
                n, m = g.nm
                if not tiles(weight, g.pattern, n, m, g.block):
                    shape = tuple(weight.shape)
                    reason = (f"{n}:{m} needs an input dimension divisible by {m}, weight {shape}"
                              if g.pattern == "nm" else
                              f"block {g.block[0]}x{g.block[1]} does not tile the 2-D view of weight {shape}")
                    result.skipped[layer_name] = f"left dense: {reason}"
                    if layer_name not in self._logged:
                        self._logged.add(layer_name)
                        log.info("pattern %s skips layer %s (%s); exclude it or choose another pattern for it",
                                 g.pattern, layer_name, reason)
                    continue
                keep = (nm_mask(weight, n, m, scores=scores) if g.pattern == "nm"
                        else block_mask(weight, g.ratio, g.block, scores=scores))
                result.masks.set(layer_name, layer, keep)
        if pooled:
            keeps = global_unstructured_masks([layer.weight for _, layer, _, _ in pooled],
                                              scores=[s for _, _, s, _ in pooled], drop=sum(k for *_, k in pooled))
            for (layer_name, layer, _, _), keep in zip(pooled, keeps):
                result.masks.set(layer_name, layer, keep)


__all__ = ["MaskSet", "PruneResult", "PruningEngine", "SCOPES", "StructuralPruner", "make_pruner"]
