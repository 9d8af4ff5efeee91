"""Latency-budgeted allocation, HALP-style (Shen et al. 2022): the per-group widths that keep the most channel
importance under a latency budget, predicted by the latency table. No training, no measurement.

    maximise   sum over groups of the (normalised) importance of the channels kept
    subject to predicted_ms(widths) <= budget_ms,   each searched dimension on its ratio grid

Greedy by importance per millisecond: every dimension starts at its highest ratio (the narrowest model the
space allows); then, one grid step at a time, the dimension whose next step adds the most importance per
predicted millisecond, among the steps that still fit the budget, gets wider, until no step fits. A step's
importance is that of the channels it brings back (the most important of those pruned, as the pruner keeps
the most important); its cost is the change of the whole model's predicted latency (so coupled widths and
the table's per-layer shapes count). Scores are normalised per group (divided by the group's mean), so that
magnitudes of layers of different sizes compare: every group's average channel is worth 1.

The latency model is a calibrated LatencyTable (`python -m autoprune calibrate`, measured per-layer
latencies: the real thing) or, without one, a MacsModel (multiply-adds: the FLOPs proxy). The result is a
PrunePlan in the search space's encoding (`SearchSpace.encode` enqueues it).

As a warm start (`search.allocate.budgets=[0.5, 0.3]`: fractions of the baseline's predicted latency) a
search's first trials are the allocations at those budgets: a front that costs only their recoveries.
As a searcher (`search.sampler=allocate`, autoprune.search.searchers.AllocationSearcher) every proposal
is an allocation, at the budgets of `budget_sequence`: spread over the fractions of the baseline's
predicted latency between the narrowest plan's and 1, coarse to fine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Protocol, Sequence

import torch
import torch.nn as nn

from autoprune.errors import ConfigError
from autoprune.hw.predictor import LatencyTable, MacsModel
from autoprune.hw.profile import HardwareProfile
from autoprune.plan import GroupPlan, PrunePlan, kept_channels
from autoprune.prune.saliency import needs_gradients
from autoprune.search.space import Dimension, SearchSpace

log = logging.getLogger("autoprune")
EPS = 1e-12


class LatencyModel(Protocol):
    """What allocation needs of a predictor (LatencyTable and MacsModel have it)."""

    groups: dict[str, int]   # group -> unpruned width
    round_to: int

    def predict_widths(self, group_widths: Mapping[str, int]) -> float: ...

    def predict_plan(self, plan: PrunePlan) -> float: ...


@dataclass(frozen=True)
class Allocation:
    """A plan chosen under a budget. `feasible` is False when even the narrowest plan of the space is
    predicted above the budget (the plan is then that narrowest one); `importance_kept`: share of the
    summed normalised importance of the searched groups' channels that the plan keeps."""

    plan: PrunePlan
    budget_ms: float
    predicted_ms: float
    baseline_ms: float
    importance_kept: float
    feasible: bool

    def summary(self) -> str:
        return (f"allocation at {self.budget_ms:.4g} ({100 * self.budget_ms / self.baseline_ms:.0f} % of the baseline's "
                f"{self.baseline_ms:.4g}): predicted {self.predicted_ms:.4g}, {100 * self.importance_kept:.0f} % of the "
                f"importance kept{'' if self.feasible else ' (over budget: the narrowest plan of the space)'}")


def _grid(d: Dimension) -> list[float]:
    n = int(round((d.range.high - d.range.low) / d.range.step))
    return [round(d.range.low + k * d.range.step, 10) for k in range(n + 1)]


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    """Scores sorted high to low and divided by their mean (all 1 when they are all 0)."""
    s = scores.detach().double().flatten().clamp_min(0).sort(descending=True).values
    mean = float(s.mean()) if len(s) else 0.0
    return s / mean if mean > EPS else torch.ones_like(s)


def allocate(space: SearchSpace, scores: Mapping[str, torch.Tensor], latency: LatencyModel,
             budget_ms: float) -> Allocation:
    """The plan of `space` keeping the most importance (`scores`: per-channel importance by group, at the
    groups' unpruned widths) whose predicted latency is within `budget_ms`."""
    if not budget_ms > 0:
        raise ConfigError(f"latency budget {budget_ms} must be > 0")
    searched = [g for d in space.dimensions if "channel" in d.patterns for g in d.groups]
    missing = sorted(g for g in searched if g not in latency.groups or g not in scores)
    if missing:
        raise ConfigError(f"allocation: no latency entry or importance for group(s) {missing}: the latency table was "
                          "built for another model (run calibrate again) or the scores miss groups")
    dims = [d for d in space.dimensions if "channel" in d.patterns]   # mask patterns leave latency alone
    grids = [_grid(d) for d in dims]
    ranked = {g: _normalised(scores[g]) for g in searched}
    for g in searched:
        if len(ranked[g]) != latency.groups[g]:
            raise ConfigError(f"allocation: group '{g}' has {len(ranked[g])} importance scores but "
                              f"{latency.groups[g]} channels in the latency table: score the unpruned model")
    rt = latency.round_to

    def width(g: str, ratio: float) -> int:
        return kept_channels(latency.groups[g], ratio, rt)

    def widths(index: Sequence[int]) -> dict[str, int]:
        return {g: width(g, grids[i][index[i]]) for i, d in enumerate(dims) for g in d.groups}

    def kept_importance(index: Sequence[int]) -> float:
        return sum(float(ranked[g][:w].sum()) for g, w in widths(index).items())

    index = [len(grid) - 1 for grid in grids]            # every dimension at its highest ratio
    current = latency.predict_widths(widths(index))
    baseline_ms = latency.predict_widths({})
    feasible = current <= budget_ms
    while feasible:
        best, best_key, best_ms = None, None, 0.0
        for i, d in enumerate(dims):
            if index[i] == 0:
                continue
            trial = index[:i] + [index[i] - 1] + index[i + 1:]
            ms = latency.predict_widths(widths(trial))
            if ms > budget_ms:
                continue
            gain = sum(float(ranked[g][width(g, grids[i][index[i]]):width(g, grids[i][trial[i]])].sum())
                       for g in d.groups)
            cost = ms - current
            # free steps first (no predicted cost), then the most importance per millisecond
            key = (1, gain) if cost <= EPS else (0, gain / cost)
            if best_key is None or key > best_key:
                best, best_key, best_ms = trial, key, ms
        if best is None:
            break
        index, current = best, best_ms
    total = sum(float(ranked[g].sum()) for g in searched)
    groups = {g: GroupPlan(0.0, d.patterns[0], space.nm, space.block) for d in space.dimensions for g in d.groups}
    groups |= {g: GroupPlan(grids[i][index[i]], "channel", space.nm, space.block)
               for i, d in enumerate(dims) for g in d.groups}
    plan = PrunePlan(groups, space.importances[0])
    return Allocation(plan, float(budget_ms), float(current), float(baseline_ms),
                      kept_importance(index) / total if total > 0 else 1.0, feasible)


def allocate_fractions(space: SearchSpace, scores: Mapping[str, torch.Tensor], latency: LatencyModel,
                       fractions: Sequence[float]) -> list[Allocation]:
    """`allocate` at each budget given as a fraction of the baseline's predicted latency."""
    base = latency.predict_widths({})
    return [allocate(space, scores, latency, float(f) * base) for f in fractions]


MAX_LEVELS = 7   # budget_sequence: 2**7 - 1 = 127 budgets, each 1/128 of the range from the next


def budget_sequence(low: float, levels: int = MAX_LEVELS) -> list[float]:
    """Budgets (fractions of the baseline's predicted latency) spread over (low, 1), coarse to fine: the
    midpoint, then the quarter points, the eighths ... `2**levels - 1` in all, each once. `low` is the
    narrowest plan's fraction; the endpoints are left out (`low` gives the narrowest plan, 1 the unpruned
    model)."""
    low = min(max(float(low), 0.0), 1.0)
    out = []
    for level in range(1, levels + 1):
        n = 2 ** level
        out += [low + (1.0 - low) * k / n for k in range(1, n, 2)]
    return out


@dataclass(frozen=True)
class AllocationInputs:
    """What allocating needs of a model: per-channel importance by group (at the unpruned widths) and a
    latency model; `kind` says which (for the log)."""

    scores: Mapping[str, torch.Tensor]
    latency: LatencyModel
    kind: str

    def allocate(self, space: SearchSpace, fraction: float) -> Allocation:
        """The allocation under `fraction` of the baseline's predicted latency."""
        return allocate(space, self.scores, self.latency, float(fraction) * self.latency.predict_widths({}))

    def narrowest_fraction(self, space: SearchSpace) -> float:
        """The narrowest plan of `space`'s predicted latency, as a fraction of the baseline's."""
        return self.latency.predict_plan(space.upper()) / self.latency.predict_widths({})


def allocation_inputs(space: SearchSpace, model: nn.Module, pruner, profile: HardwareProfile,
                      table: Optional[str] = None) -> AllocationInputs:
    """Importance by the space's first criterion (l2 for the gradient criteria: no gradients here) and the
    latency table at `table` (else the MACs model of `model`'s layers)."""
    criterion = space.importances[0]
    scores = pruner.channel_scores(model, "l2" if needs_gradients(criterion) else criterion)
    kind = "latency table" if table else "MACs (no search.allocate.table: the FLOPs proxy)"
    return AllocationInputs(scores, latency_model(model, pruner, profile, table), kind)


def latency_model(model: nn.Module, pruner, profile: HardwareProfile, table: Optional[str]) -> LatencyModel:
    """The calibrated table at `table` (checked against `profile`), else the MACs of `model`'s layers."""
    if table:
        return LatencyTable.load(Path(table), profile)
    from autoprune.calibrate import layer_specs   # joins the pruner to the layer shapes

    return MacsModel({g.name: g.channels for g in pruner.groups(model)}, layer_specs(model, pruner), pruner.round_to)


def warm_start_plans(space: SearchSpace, model: nn.Module, pruner, profile: HardwareProfile,
                     budgets: Sequence[float], table: Optional[str] = None) -> list[PrunePlan]:
    """The allocations at `budgets` (fractions of the baseline's predicted latency), as warm-start plans;
    importance by the space's first criterion (l2 for the gradient criteria: no gradients here)."""
    if not budgets:
        return []
    inputs = allocation_inputs(space, model, pruner, profile, table)
    plans = []
    for allocation in allocate_fractions(space, inputs.scores, inputs.latency, budgets):
        log.info("warm start by %s: %s", inputs.kind, allocation.summary())
        plans.append(allocation.plan)
    return plans


__all__ = ["Allocation", "AllocationInputs", "LatencyModel", "allocate", "allocate_fractions", "allocation_inputs",
           "budget_sequence", "warm_start_plans"]
