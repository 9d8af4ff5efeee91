"""SearchSpace: which groups are searched, the ratios each may take, tied groups, importance choice.

A space is a YAML file (`search_spaces/<name>.yaml`, or any path):

    groups: all                 # or a list of group names / glob patterns ("layers.2.*")
    exclude: []                 # names / globs never pruned
    ratio: {low: 0.0, high: 0.85, step: 0.05}
    per_group:                  # optional range overrides, by name or glob
      "layers.2.*": {high: 0.9}
    tie:                        # groups that share one ratio (one Optuna parameter per tie)
      stage1: ["layers.1.*"]
    importance: l2              # or a list, e.g. [l2, fpgm], to let the search choose

Each searched dimension is one Optuna parameter: `ratio.<group>` (or `ratio.<tie name>`), plus
`importance` when several criteria are offered.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import optuna
import yaml

from autoprune.errors import ConfigError
from autoprune.plan import GroupPlan, PrunePlan
from autoprune.prune.importance import IMPORTANCES
from autoprune.resources import resolve_yaml

PARAM_PREFIX = "ratio."
KEYS = {"description", "groups", "exclude", "ratio", "per_group", "tie", "importance"}


@dataclass(frozen=True)
class RatioRange:
    low: float = 0.0
    high: float = 0.85
    step: float = 0.05

    def __post_init__(self) -> None:
        if not (0.0 <= self.low <= self.high < 1.0):
            raise ConfigError(f"ratio range [{self.low}, {self.high}] must satisfy 0 <= low <= high < 1")
        if not self.step > 0:
            raise ConfigError(f"ratio step {self.step} must be > 0")

    def snap(self, ratio: float) -> float:
        """Nearest ratio on this range's grid."""
        k = round((min(max(ratio, self.low), self.high) - self.low) / self.step)
        return round(min(self.low + k * self.step, self.high), 10)


@dataclass(frozen=True)
class Dimension:
    """One searched ratio, shared by `groups` (one group unless tied)."""

    name: str
    groups: tuple[str, ...]
    range: RatioRange

    @property
    def param(self) -> str:
        return PARAM_PREFIX + self.name


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]
    importances: tuple[str, ...] = ("l2",)

    def __post_init__(self) -> None:
        if not self.dimensions:
            raise ConfigError("the search space is empty: no prunable group is searched "
                              "(check groups/exclude in the search space and prune.ignore)")
        bad = [i for i in self.importances if i not in IMPORTANCES]
        if bad or not self.importances:
            raise ConfigError(f"search space importance {bad or '[]'} unknown: choose from {sorted(IMPORTANCES)}")

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g for d in self.dimensions for g in d.groups)

    def suggest(self, trial: optuna.trial.BaseTrial) -> PrunePlan:
        groups = {}
        for d in self.dimensions:
            ratio = trial.suggest_float(d.param, d.range.low, d.range.high, step=d.range.step)
            groups.update({g: GroupPlan(ratio) for g in d.groups})
        importance = (trial.suggest_categorical("importance", list(self.importances))
                      if len(self.importances) > 1 else self.importances[0])
        return PrunePlan(groups, importance)

    def encode(self, plan: PrunePlan) -> dict:
        """Optuna parameters that make `suggest` return `plan` (for enqueueing warm-start points)."""
        params = {d.param: d.range.snap(plan.ratio(d.groups[0])) for d in self.dimensions}
        if len(self.importances) > 1:
            params["importance"] = plan.importance if plan.importance in self.importances else self.importances[0]
        return params

    def uniform(self, ratio: float) -> PrunePlan:
        return PrunePlan({g: GroupPlan(d.range.snap(ratio)) for d in self.dimensions for g in d.groups},
                         self.importances[0])

    def describe(self) -> dict:
        return {"dimensions": [[d.name, list(d.groups), d.range.low, d.range.high, d.range.step]
                               for d in self.dimensions], "importances": list(self.importances)}


def _match(patterns: Sequence[str], names: Sequence[str], where: str) -> list[str]:
    """Group names matched by names or glob patterns; a pattern matching nothing is an error."""
    out = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, str(pattern))]
        if not hits:
            raise ConfigError(f"{where}: '{pattern}' matches no prunable group; the model's groups: {list(names)}")
        out.extend(h for h in hits if h not in out)
    return out


def _range(data, base: RatioRange | None, where: str) -> RatioRange:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping like {{low: 0.0, high: 0.8, step: 0.05}}")
    bad = sorted(set(data) - {"low", "high", "step"})
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {bad}; use low, high, step")
    base = base or RatioRange()
    try:
        return RatioRange(float(data.get("low", base.low)), float(data.get("high", base.high)),
                          float(data.get("step", base.step)))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_space(data: Mapping, all_groups: Sequence[str], default_importance: str = "l2",
                where: str = "search space") -> SearchSpace:
    """Validate a search-space mapping against the model's groups."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a YAML mapping")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(KEYS)}")
    selected = data.get("groups", "all")
    groups = list(all_groups) if selected == "all" else _match(selected or [], all_groups, f"{where} groups")
    excluded = set(_match(data.get("exclude") or [], all_groups, f"{where} exclude"))
    groups = [g for g in groups if g not in excluded]
    default = _range(data.get("ratio") or {}, None, f"{where} ratio")
    ranges = {g: default for g in groups}
    for pattern, spec in (data.get("per_group") or {}).items():
        for g in _match([pattern], groups, f"{where} per_group"):
            ranges[g] = _range(spec, default, f"{where} per_group '{pattern}'")
    dims, tied = [], set()
    for name, patterns in (data.get("tie") or {}).items():
        members = _match(patterns if isinstance(patterns, list) else [patterns], groups, f"{where} tie '{name}'")
        clash = tied & set(members)
        if clash:
            raise ConfigError(f"{where}: group(s) {sorted(clash)} appear in more than one tie")
        tied |= set(members)
        if len({ranges[m] for m in members}) > 1:
            raise ConfigError(f"{where} tie '{name}': tied groups must share one ratio range (check per_group)")
        dims.append(Dimension(str(name), tuple(members), ranges[members[0]]))
    dims += [Dimension(g, (g,), ranges[g]) for g in groups if g not in tied]
    names = [d.name for d in dims]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a tie name equals a group name: rename the tie")
    importance = data.get("importance", default_importance)
    importances = tuple(importance) if isinstance(importance, (list, tuple)) else (str(importance),)
    return SearchSpace(tuple(dims), importances)


def load_space(name_or_path: str, all_groups: Sequence[str], default_importance: str = "l2") -> SearchSpace:
    path = resolve_yaml("search_spaces", str(name_or_path))
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return build_space(data, all_groups, default_importance, where=f"search space {path}")
