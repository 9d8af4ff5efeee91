"""Multi-fidelity candidates: every asked candidate is scored cheaply at rung 0, and only the promising
ones get the full recovery (`search.fidelity.rungs=[rung0,full]`).

    ask → plan → rung 0 (autoprune.rung0: adaptive BN / a short fine-tune, latency measured or predicted)
        → promoted?  yes: full recovery, told COMPLETE with today's metrics (the front's trials)
                     no:  told PRUNED, its rung-0 scores kept as user attrs (a candidate only)

**Promotion (MO-ASHA style, asynchronous).** A candidate is promoted when, with its rung-0 val accuracy
raised by `margin`, no other rung-0 result of the study dominates it on the search objectives (plain
non-domination for margin 0). "Other rung-0 results" are every candidate of the study scored so far,
by any worker or earlier invocation, promoted or not: nobody waits for a rung to fill. The first
`warmup` candidates of a study are always promoted, so the front never starts empty. The margin is on
val accuracy only: that is the axis rung 0 estimates (its latency, params and MACs are the final
model's own), so a candidate that trails the front by less than rung 0's error still gets its chance.
Constraints that do not depend on recovery (latency, params, MACs) are checked at rung 0 already: a
candidate violating one can never be feasible, so it is not promoted. `promote=all` promotes every
candidate (rung 0 is then only recorded, e.g. to measure its rank correlation with full fidelity).

**Why PRUNED for candidates that are not promoted** (Optuna 5.0):
- `study.best_trials` (the Pareto front), the report (`report.collect`), `pick` and the test-split
  evaluation read COMPLETE trials only, so they see full-fidelity results only, with no filter to forget.
  A COMPLETE candidate with rung-0 values would sit in the front next to fully recovered models.
- TPE (multi-objective) learns from PRUNED trials: they count towards `n_startup_trials` and are placed
  in its "bad" group once the "good" share (10 % of the trials) is filled by COMPLETE ones, so the
  sampler moves away from regions rung 0 rejected. NSGA-II builds its populations from COMPLETE trials
  only and ignores them; GP, random and QMC treat them as seen. FAIL would tell TPE nothing and would
  count as a failure in the report.
- PRUNED trials count against `search.n_trials`: the budget is the number of candidates.
No constraint values are set on a candidate (TPE would rank it among the infeasible trials instead).

**Records.** In Optuna every candidate has user attrs `rung` (0: scored at rung 0 only; 1: fully
recovered) and `rung0` (its rung-0 val_accuracy, latency_ms, params, macs, method, latency source,
seconds, promoted and why). In MLflow each candidate gets a run with `autoprune.role=candidate`,
`autoprune.rung=0` and its rung-0 metrics; a promoted one also gets its trial run
(`autoprune.role=trial`), exactly as a single-fidelity search logs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import optuna

from autoprune.search.objectives import CONSTRAINTS, DIRECTIONS, Objectives

if TYPE_CHECKING:   # the report reads the attribute names below without importing torch
    from autoprune.plan import PrunePlan
    from autoprune.rung0 import Rung0Result, Rung0Scorer

RUNG_ATTR = "rung"      # user attr: the last rung a candidate reached (0, or FULL)
RUNG0_ATTR = "rung0"    # user attr: its rung-0 scores (a dict)
FULL = 1
RUNG0_METRICS = ("val_accuracy", "latency_ms", "params", "macs")   # what rung 0 scores


def not_promoted(trial: optuna.trial.FrozenTrial) -> bool:
    """A candidate scored at rung 0 only (told PRUNED)."""
    return trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs.get(RUNG_ATTR) == 0


def rung0_metrics(study: optuna.Study, exclude: Optional[int] = None) -> list[tuple[int, dict]]:
    """(trial number, rung-0 metrics) of every candidate of `study` scored at rung 0, but `exclude`."""
    out = []
    for t in study.get_trials(deepcopy=False):
        scores = t.user_attrs.get(RUNG0_ATTR)
        if t.number != exclude and isinstance(scores, dict):
            out.append((t.number, {k: scores[k] for k in RUNG0_METRICS if k in scores}))
    return out


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str


@dataclass(frozen=True)
class PromotionRule:
    """Who goes on to the full recovery (see the module docstring)."""

    objectives: Objectives
    margin: float = 0.0
    warmup: int = 0
    promote: str = "front"

    def decide(self, metrics: Mapping[str, float], others: Sequence[tuple[int, Mapping[str, float]]]) -> Promotion:
        """`metrics`: a candidate's rung-0 scores; `others`: (trial number, rung-0 scores) seen so far."""
        if self.promote == "all":
            return Promotion(True, "promote=all")
        violated = [name for name, bound in self.objectives.bounds
                    if CONSTRAINTS[name][0] != "val_accuracy" and CONSTRAINTS[name][0] in metrics
                    and CONSTRAINTS[name][1] * (float(metrics[CONSTRAINTS[name][0]]) - bound) > 0]
        if violated:
            return Promotion(False, f"violates {', '.join(violated)} already at rung 0")
        if len(others) < self.warmup:
            return Promotion(True, f"warm-up ({len(others) + 1} of {self.warmup})")
        mine = self._costs(metrics, self.margin)
        for number, theirs in others:
            cost = self._costs(theirs, 0.0)
            if all(a <= b for a, b in zip(cost, mine)) and cost != mine:
                return Promotion(False, f"dominated at rung 0 by #{number}"
                                        + (f" by more than margin {self.margin:g}" if self.margin else ""))
        return Promotion(True, "on the rung-0 front" + (f" (within margin {self.margin:g})" if self.margin else ""))

    def _costs(self, metrics: Mapping[str, float], margin: float) -> list[float]:
        """Objectives as costs (lower is better); val accuracy raised by `margin` first."""
        out = []
        for name in self.objectives.names:
            value = float(metrics[name])
            if DIRECTIONS[name] == "maximize":
                out.append(-(value + (margin if name == "val_accuracy" else 0.0)))
            else:
                out.append(value)
        return out


@dataclass(frozen=True)
class RungOutcome:
    """A candidate scored at rung 0 and the promotion decision."""

    rung: int
    result: Rung0Result
    promotion: Promotion
    metrics: dict = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.promotion.promoted


class Rung0Step:
    """Rung 0 for the search loop: score a trial's plan, decide, record the scores on the trial."""

    def __init__(self, scorer: Rung0Scorer, rule: PromotionRule):
        self.scorer, self.rule = scorer, rule

    def run(self, study: optuna.Study, trial: optuna.Trial, plan: PrunePlan) -> RungOutcome:
        result = self.scorer.score(plan)
        metrics = result.metrics()
        promotion = self.rule.decide(metrics, rung0_metrics(study, exclude=trial.number))
        trial.set_user_attr(RUNG0_ATTR, {**metrics, "method": result.method, "latency_source": result.latency_source,
                                         "seconds": result.seconds, "promoted": promotion.promoted,
                                         "reason": promotion.reason})
        trial.set_user_attr(RUNG_ATTR, FULL if promotion.promoted else 0)
        return RungOutcome(0, result, promotion, metrics)


def check_objectives(objectives: Sequence[str]) -> Optional[str]:
    """Why rung 0 cannot rank candidates on these objectives (None: it can)."""
    missing = [o for o in objectives if o not in RUNG0_METRICS]
    if missing:
        return (f"search.fidelity.rungs with rung0 cannot rank on {', '.join(missing)} (rung 0 scores "
                f"{', '.join(RUNG0_METRICS)}): drop it from search.objectives or use search.fidelity.rungs=[full]")
    return None


__all__ = ["FULL", "RUNG0_ATTR", "RUNG0_METRICS", "RUNG_ATTR", "Promotion", "PromotionRule", "RungOutcome",
           "Rung0Step", "check_objectives", "not_promoted", "rung0_metrics"]
