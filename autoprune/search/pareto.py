"""Pareto-front quality: hypervolume of a search's trials, normalised to [0, 1], for any objectives.

Each objective is mapped to a loss in [0, 1] relative to the baseline scored in the same run, and
Optuna's exact hypervolume (WFG, any number of dimensions) is taken against the reference point
(1, ..., 1), so the box has volume 1:

    val_accuracy (maximised)   loss = 1 - clip((acc - (baseline_acc - max_drop)) / max_drop, 0, 1)
                               0 = at or above the baseline's accuracy, 1 = max_drop below it or worse
    anything minimised         loss = clip(value / baseline_value, 0, 1)
    (latency_ms, params, ...)  0 = free, 1 = as costly as the unpruned baseline or more

0 = nothing useful found; 1 = a model at no accuracy loss and no cost. With the default objectives
this is the area of the accuracy-vs-latency front within `max_drop` of the baseline, divided by the
box's area. Comparable across searches of the same task, objectives and profile.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume   # exact, any dimension (pinned optuna: constraints.txt)

from autoprune.search.objectives import DIRECTIONS, Objectives


def losses(metrics: Mapping[str, float], objectives: Sequence[str], baseline: Mapping[str, float],
           max_drop: float) -> list[float]:
    """One trial's objectives as losses in [0, 1] (see the module docstring)."""
    out = []
    for name in objectives:
        value, base = float(metrics[name]), float(baseline[name])
        if DIRECTIONS[name] == "maximize":
            gain = (value - (base - max_drop)) / max_drop if max_drop > 0 else float(value >= base)
            out.append(1.0 - min(1.0, max(0.0, gain)))
        else:
            out.append(min(1.0, max(0.0, value / base)) if base > 0 else 1.0)
    return out


def non_dominated(points: Mapping[int, Mapping[str, float]], objectives: Sequence[str]) -> set[int]:
    """The keys of `points` (metric name -> value each) that no other point dominates in `objectives`."""
    signs = [-1.0 if DIRECTIONS[o] == "maximize" else 1.0 for o in objectives]
    cost = {n: [s * float(m[o]) for s, o in zip(signs, objectives)] for n, m in points.items()}
    return {n for n, a in cost.items() if not any(all(x <= y for x, y in zip(b, a)) and b != a for b in cost.values())}


def normalized_hypervolume(trials: Sequence[Mapping[str, float]], objectives: Sequence[str],
                           baseline: Mapping[str, float], max_drop: float = 0.1) -> float:
    """Hypervolume in [0, 1] of `trials` (each a mapping metric -> value, feasible ones only) for
    `objectives`, relative to the `baseline`'s metrics."""
    points = np.array([losses(t, objectives, baseline, max_drop) for t in trials], dtype=float)
    points = points[(points < 1.0).all(axis=1)] if len(points) else points   # on the box's edge: no volume
    if len(points) == 0:
        return 0.0
    return float(compute_hypervolume(points, np.ones(len(objectives))))


def front_hypervolume(study: optuna.Study, objectives: Objectives, baseline: Mapping[str, float], max_drop: float
                      ) -> tuple[float, int]:
    """Normalised hypervolume of the feasible completed trials, and how many trials completed."""
    complete = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    feasible = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
    return normalized_hypervolume([t.user_attrs for t in feasible], objectives.names, baseline, max_drop), len(complete)
