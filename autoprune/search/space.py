"""SearchSpace: which groups are searched and the ratios each may take (search_spaces/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import optuna
import yaml

from autoprune.errors import ConfigError
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.resources import resolve_yaml

PARAM_PREFIX = "ratio."


@dataclass(frozen=True)
class SearchSpace:
    groups: tuple[str, ...]
    low: float = 0.0
    high: float = 0.85
    step: float = 0.05
    importance: str = "l2"

    def __post_init__(self) -> None:
        if not self.groups:
            raise ConfigError("the search space has no prunable groups: check prune.ignore and the model")
        if not (0.0 <= self.low <= self.high < 1.0):
            raise ConfigError(f"search space ratio range [{self.low}, {self.high}] must satisfy 0 <= low <= high < 1")
        if not 0 < self.step <= max(self.high - self.low, self.step):
            raise ConfigError(f"search space ratio step {self.step} must be > 0")

    def suggest(self, trial: optuna.trial.BaseTrial) -> PrunePlan:
        """One ratio per group, as Optuna parameters named `ratio.<group>`."""
        groups = {
            name: GroupPlan(trial.suggest_float(PARAM_PREFIX + name, self.low, self.high, step=self.step))
            for name in self.groups
        }
        return PrunePlan(groups, self.importance)

    def params(self, plan: PrunePlan) -> dict[str, float]:
        """The Optuna parameters that encode `plan` (for enqueueing warm-start points)."""
        return {PARAM_PREFIX + name: plan.ratio(name) for name in self.groups}

    def snap(self, ratio: float) -> float:
        """Nearest ratio on this space's grid."""
        k = round((min(max(ratio, self.low), self.high) - self.low) / self.step)
        return round(self.low + k * self.step, 10)

    def uniform(self, ratio: float) -> PrunePlan:
        return PrunePlan.uniform(self.groups, self.snap(ratio), self.importance)

    def describe(self) -> dict:
        return {"groups": list(self.groups), "low": self.low, "high": self.high, "step": self.step,
                "importance": self.importance}


def plan_from_params(params: dict, importance: str = "l2") -> PrunePlan:
    """Rebuild a PrunePlan from a trial's Optuna parameters."""
    groups = {k[len(PARAM_PREFIX):]: GroupPlan(float(v)) for k, v in params.items() if k.startswith(PARAM_PREFIX)}
    return PrunePlan(groups, importance)


def load_space(name_or_path: str, all_groups: Sequence[str], importance: str) -> SearchSpace:
    path = resolve_yaml("search_spaces", str(name_or_path))
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    known = {"ratio", "groups", "description"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"search space {path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    ratio = data.get("ratio") or {}
    bad = sorted(set(ratio) - {"low", "high", "step"})
    if bad:
        raise ConfigError(f"search space {path}: unknown ratio key(s) {bad}; use low, high, step")
    groups = data.get("groups", "all")
    if groups == "all":
        groups = list(all_groups)
    missing = sorted(set(groups) - set(all_groups))
    if missing:
        raise ConfigError(f"search space {path} names unknown group(s) {missing}; the model's groups: {list(all_groups)}")
    return SearchSpace(tuple(groups), float(ratio.get("low", 0.0)), float(ratio.get("high", 0.85)),
                       float(ratio.get("step", 0.05)), importance)
