"""What the report recommends: the model to deploy and the `pick` command that registers it, accuracy
intervals, and a flag on models whose test accuracy disagrees with their validation accuracy.

Recommendation rule, among the Pareto models faster than the baseline: the fastest one whose
validation accuracy is within `tolerance` (default 1 point) of the baseline's; when none is, the
most accurate one; when no Pareto model is faster than the baseline, none. The Pareto front
already holds only models meeting every `search.constraints` bound. The `pick` command is built so
that `autoprune.pick.choose` (the rule `pick` itself runs) selects exactly that model.

Intervals: 95% Wilson score interval of an accuracy measured on n examples. Val–test flag: the
pooled two-proportion z-test, |val - test| > 1.96 standard errors of the difference.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, replace
from typing import Optional

from scipy.stats import binomtest, norm

from autoprune import pick  # a module, not names: autoprune.pick imports autoprune.report too
from autoprune.report.collect import Candidate, ReportData

DEFAULT_TOLERANCE = 0.01   # 1 point of validation accuracy
CONFIDENCE = 0.95
Z = float(norm.ppf(0.5 + CONFIDENCE / 2))  # 1.96


SPLIT_SIZES = "split_sizes"   # the study user attribute a search records them in


@dataclass(frozen=True)
class SplitSizes:
    """How many examples the validation and test accuracies were measured on."""

    val: int
    test: int

    @classmethod
    def of(cls, data) -> "SplitSizes":
        """From a task's DataSplits."""
        return cls(len(data.val), len(data.test))


def interval(accuracy: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy measured on n examples."""
    ci = binomtest(round(accuracy * n), n).proportion_ci(CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def gap_is_significant(c: Candidate, sizes: SplitSizes) -> bool:
    """True when val and test accuracy differ by more than 1.96 standard errors of their difference
    (pooled two-proportion z-test): more than the sampling noise of two splits of these sizes explains."""
    if c.test_accuracy is None:
        return False
    k_val, k_test = round(c.val_accuracy * sizes.val), round(c.test_accuracy * sizes.test)
    pooled = (k_val + k_test) / (sizes.val + sizes.test)
    se = math.sqrt(pooled * (1 - pooled) * (1 / sizes.val + 1 / sizes.test))
    gap = k_val / sizes.val - k_test / sizes.test
    return se > 0 and abs(gap) > Z * se


@dataclass(frozen=True)
class Recommendation:
    model: Candidate
    reason: str        # why this one, in words
    rule: pick.PickRule  # the pick constraints that select it
    command: str       # the exact `python -m autoprune pick ...` that registers it


def _ceil(value: float, digits: int) -> float:
    """`value` rounded up to `digits` significant digits."""
    if value <= 0:
        return value
    scale = 10 ** (digits - 1 - math.floor(math.log10(abs(value))))
    return math.ceil(value * scale) / scale


def _floor(value: float, decimals: int) -> float:
    return math.floor(value * 10 ** decimals) / 10 ** decimals


def _rule_for(model: Candidate, min_accuracy: Optional[float], trials: list[Candidate]) -> pick.PickRule:
    """The shortest-written pick constraints under which `choose` returns `model`."""
    for digits in range(3, 18):
        rule = pick.PickRule(max_latency_ms=_ceil(model.latency_ms, digits),
                             min_accuracy=None if min_accuracy is None else _floor(min_accuracy, 4))
        for candidate in (rule, replace(rule, max_params=model.params)):  # params: a search constraint pick lacks
            if pick.choose(trials, candidate)[0].trial == model.trial:
                return candidate
    return pick.PickRule(max_latency_ms=model.latency_ms, max_params=model.params)


def _command(study_name: str, rule: pick.PickRule) -> str:
    words = ["python", "-m", "autoprune", "pick", f"search.study_name={study_name}"]
    words += [f"pick.{key}={value!r}" for key, value in vars(rule).items() if value is not None]
    return " ".join(shlex.quote(w) for w in words)


def recommend(data: ReportData, tolerance: float = DEFAULT_TOLERANCE) -> Optional[Recommendation]:
    """The model the report recommends (None when no Pareto model is faster than the baseline)."""
    faster = [c for c in data.front if c.latency_ms < data.baseline.latency_ms]
    if not faster:
        return None
    floor = data.baseline.val_accuracy - tolerance
    close = [c for c in faster if c.val_accuracy >= floor]
    if close:
        model = min(close, key=lambda c: (c.latency_ms, -c.val_accuracy))
        reason = (f"the fastest Pareto model within {100 * tolerance:g} point of the baseline's validation "
                  f"accuracy ({100 * data.baseline.val_accuracy:.2f}%)")
        rule = _rule_for(model, floor, data.trials)
    else:
        model = max(faster, key=lambda c: (c.val_accuracy, -c.latency_ms))
        reason = (f"the most accurate Pareto model faster than the baseline: none is within {100 * tolerance:g} point of the baseline's "
                  f"validation accuracy ({100 * data.baseline.val_accuracy:.2f}%)")
        rule = _rule_for(model, None, data.trials)
    return Recommendation(model, reason, rule, _command(data.study_name, rule))
