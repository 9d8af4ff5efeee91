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
    patterns: [channel]         # pruning patterns the search may pick per group (default: prune.pattern):
                                # channel | unstructured | nm | block; or per layer type:
                                #   {default: [channel, nm], depthwise: [channel], linear: [channel, unstructured]}
                                # (types: conv, depthwise, grouped, linear; transformers: heads, ffn)
    nm: [2, 4]                  # N and M of pattern nm (default: prune.nm)
    block: [1, 4]               # block shape of pattern block (default: prune.block)

`per_group` entries may also set `patterns: [...]` for the groups they match. Each searched dimension
is one Optuna parameter: `ratio.<group>` (or `ratio.<tie name>`), plus `pattern.<group>` when a group
has several patterns to choose from, plus `importance` when several criteria are offered. A ratio of
0 leaves a group untouched whatever its pattern; for nm any ratio > 0 applies N:M (its sparsity is 1 - N/M).
Each group's range is cut to the ratios it can really take (`PrunableGroup.max_ratio`: e.g. at most 0.5
for an attention with 2 heads), so that no trial is spent on a plan that cannot be built.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import optuna
import yaml

from autoprune.errors import ConfigError
from autoprune.plan import DEFAULT_BLOCK, DEFAULT_NM, MASK_PATTERNS, PATTERNS, GroupPlan, PrunePlan
from autoprune.prune.importance import IMPORTANCES
from autoprune.prune.criteria import check_for_heads, check_for_masks
from autoprune.resources import resolve_yaml, yaml_problem, yaml_size_problem

PARAM_PREFIX = "ratio."
PATTERN_PREFIX = "pattern."
KEYS = {"description", "groups", "exclude", "ratio", "per_group", "tie", "importance", "patterns", "nm", "block"}
KINDS = ("conv", "depthwise", "grouped", "linear", "heads", "ffn")   # group types `patterns` may key on


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
    """One searched ratio (and pattern choice), shared by `groups` (one group unless tied)."""

    name: str
    groups: tuple[str, ...]
    range: RatioRange
    patterns: tuple[str, ...] = ("channel",)

    @property
    def param(self) -> str:
        return PARAM_PREFIX + self.name

    @property
    def pattern_param(self) -> str:
        return PATTERN_PREFIX + self.name


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]
    importances: tuple[str, ...] = ("l2",)
    nm: tuple[int, int] = DEFAULT_NM
    block: tuple[int, int] = DEFAULT_BLOCK
    per_group: bool = False   # the space file sets ranges per group (a sensitivity prior), not only feasibility caps

    def __post_init__(self) -> None:
        if not self.dimensions:
            raise ConfigError("the search space is empty: no prunable group is searched "
                              "(check groups/exclude in the search space and prune.ignore)")
        for d in self.dimensions:
            wrong = [p for p in d.patterns if p not in PATTERNS]
            if wrong or not d.patterns:
                raise ConfigError(f"search space patterns {wrong or '[]'} of '{d.name}' unknown: "
                                  f"choose from {list(PATTERNS)}")
        masked = sorted({p for d in self.dimensions for p in d.patterns if p in MASK_PATTERNS})
        check_for_masks(self.importances, masked)
        GroupPlan(0.0, "channel", self.nm, self.block)  # validates nm and block

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(g for d in self.dimensions for g in d.groups)

    @property
    def patterns(self) -> tuple[str, ...]:
        """Every pattern some dimension may take, in PATTERNS order."""
        used = {p for d in self.dimensions for p in d.patterns}
        return tuple(p for p in PATTERNS if p in used)

    def _group_plan(self, ratio: float, pattern: str) -> GroupPlan:
        return GroupPlan(ratio, pattern, self.nm, self.block)

    def suggest(self, trial: optuna.trial.BaseTrial) -> PrunePlan:
        groups = {}
        for d in self.dimensions:
            # on the grid without float noise (Optuna's 0.7000000000000001 is 0.7 in the plan, MLflow, the report)
            ratio = d.range.snap(trial.suggest_float(d.param, d.range.low, d.range.high, step=d.range.step))
            pattern = (trial.suggest_categorical(d.pattern_param, list(d.patterns))
                       if len(d.patterns) > 1 else d.patterns[0])
            groups.update({g: self._group_plan(ratio, pattern) for g in d.groups})
        importance = (trial.suggest_categorical("importance", list(self.importances))
                      if len(self.importances) > 1 else self.importances[0])
        return PrunePlan(groups, importance)

    def encode(self, plan: PrunePlan) -> dict:
        """Optuna parameters that make `suggest` return `plan` (for enqueueing warm-start points)."""
        params: dict[str, float | str] = {d.param: d.range.snap(plan.ratio(d.groups[0])) for d in self.dimensions}
        for d in self.dimensions:
            if len(d.patterns) > 1:
                pattern = plan.pattern(d.groups[0])
                params[d.pattern_param] = pattern if pattern in d.patterns else d.patterns[0]
        if len(self.importances) > 1:
            params["importance"] = plan.importance if plan.importance in self.importances else self.importances[0]
        return params

    def uniform(self, ratio: float, pattern: str | None = None) -> PrunePlan:
        """The same ratio everywhere, each group with `pattern` when it may take it, else its first choice."""
        return PrunePlan({g: self._group_plan(d.range.snap(ratio), pattern if pattern in d.patterns else d.patterns[0])
                          for d in self.dimensions for g in d.groups}, self.importances[0])

    def upper(self) -> PrunePlan:
        """Every dimension at its highest ratio: for a sensitivity prior (per-group highs), the plan
        that prunes each group as far as it tolerated alone."""
        return PrunePlan({g: self._group_plan(d.range.high, d.patterns[0]) for d in self.dimensions for g in d.groups},
                         self.importances[0])

    def warm_start(self, ratios: Sequence[float]) -> list[PrunePlan]:
        """The plans a new study tries first: `uniform(r)` for each ratio (a ratio above a group's highest
        takes that highest, so 0.85 in the default space is its most pruned plan), then with a sensitivity
        prior `upper()`; a plan already in the list is not repeated."""
        plans = [self.uniform(r) for r in ratios] + ([self.upper()] if self.has_group_ranges else [])
        unique: list[PrunePlan] = []
        for plan in plans:
            if plan not in unique:
                unique.append(plan)
        return unique

    @property
    def has_group_ranges(self) -> bool:
        """Ranges set per group by the space file (a sensitivity prior); caps from what a group can take
        (PrunableGroup.max_ratio, the pre-flight) do not count."""
        return self.per_group and len({d.range for d in self.dimensions}) > 1

    def describe(self) -> dict:
        out = {"dimensions": [[d.name, list(d.groups), d.range.low, d.range.high, d.range.step]
                              for d in self.dimensions], "importances": list(self.importances)}
        if any(d.patterns != ("channel",) for d in self.dimensions):  # channel-only spaces keep their old digest
            out["patterns"] = {d.name: list(d.patterns) for d in self.dimensions}
            out["nm"], out["block"] = list(self.nm), list(self.block)
        return out


def _match(patterns: Sequence[str], names: Sequence[str], where: str) -> list[str]:
    """Group names matched by names or glob patterns; a pattern matching nothing is an error."""
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, str(pattern))]
        if not hits:
            raise ConfigError(f"{where}: '{pattern}' matches no prunable group; the model's groups: {list(names)}")
        out.extend(h for h in hits if h not in out)
    return out


def _patterns(value, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not items:
        raise ConfigError(f"{where} must be a pattern or a non-empty list of them, from {list(PATTERNS)}")
    out = tuple(dict.fromkeys(str(p) for p in items))
    wrong = [p for p in out if p not in PATTERNS]
    if wrong:
        raise ConfigError(f"{where}: unknown pattern(s) {wrong}: choose from {list(PATTERNS)}")
    return out


def _kind_patterns(data, default: tuple[str, ...], where: str) -> dict[str, tuple[str, ...]]:
    """`patterns:` as {kind: choices} (key 'default' for the kinds not named)."""
    if data is None:
        return {k: default for k in KINDS}
    if not isinstance(data, Mapping):
        return {k: _patterns(data, where) for k in KINDS}
    bad = sorted(set(data) - {"default", *KINDS})
    if bad:
        raise ConfigError(f"{where}: unknown layer type(s) {bad}; use default or any of {list(KINDS)}")
    base = _patterns(data["default"], f"{where} default") if "default" in data else default
    return {k: _patterns(data[k], f"{where} {k}") if k in data else base for k in KINDS}


def _range(data, base: RatioRange | None, where: str) -> RatioRange:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping like {{low: 0.0, high: 0.8, step: 0.05}}")
    bad = sorted(set(data) - {"low", "high", "step", "patterns"})
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {bad}; use low, high, step (and patterns)")
    base = base or RatioRange()
    try:
        return RatioRange(float(data.get("low", base.low)), float(data.get("high", base.high)),
                          float(data.get("step", base.step)))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _feasible(r: RatioRange, most: float) -> RatioRange:
    """`r` cut to the ratios a group can take (`most`: its largest, from PrunableGroup.max_ratio), on r's
    grid, so that no trial is spent on a plan that cannot be built."""
    if r.high <= most + 1e-9:
        return r
    if most < r.low:
        return RatioRange(0.0, 0.0, r.step)
    k = math.floor((most - r.low) / r.step + 1e-9)
    return RatioRange(r.low, round(r.low + k * r.step, 10), r.step)


def _names_and_kinds(all_groups) -> tuple[list[str], dict[str, str]]:
    """Group names, and their kinds when PrunableGroup objects (anything with .name and .kind) are given."""
    names, kinds = [], {}
    for g in all_groups:
        name = str(getattr(g, "name", g))
        names.append(name)
        kinds[name] = str(getattr(g, "kind", "conv"))
    return names, kinds


def build_space(data: Mapping, all_groups: Sequence, default_importance: str | Sequence[str] = "l2",
                where: str = "search space", defaults: Mapping | None = None) -> SearchSpace:
    """Validate a search-space mapping against the model's groups (names, or PrunableGroups whose `kind`
    the per-layer-type `patterns` key on). `defaults`: the `prune:` config (pattern, nm, block) used for
    what the space does not say."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a YAML mapping")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(KEYS)}")
    defaults = dict(defaults or {})
    all_groups_spec = list(all_groups)
    all_groups, kinds = _names_and_kinds(all_groups_spec)
    selected = data.get("groups", "all")
    groups = list(all_groups) if selected == "all" else _match(selected or [], all_groups, f"{where} groups")
    excluded = set(_match(data.get("exclude") or [], all_groups, f"{where} exclude"))
    groups = [g for g in groups if g not in excluded]
    default = _range(data.get("ratio") or {}, None, f"{where} ratio")
    by_kind = _kind_patterns(data.get("patterns"), _patterns(defaults.get("pattern") or "channel", "prune.pattern"),
                             f"{where} patterns")
    ranges = {g: default for g in groups}
    patterns = {g: by_kind.get(kinds[g], by_kind["conv"]) for g in groups}
    for pattern, spec in (data.get("per_group") or {}).items():
        for g in _match([pattern], groups, f"{where} per_group"):
            ranges[g] = _range(spec, default, f"{where} per_group '{pattern}'")
            if "patterns" in spec:
                patterns[g] = _patterns(spec["patterns"], f"{where} per_group '{pattern}' patterns")
    feasible = {str(getattr(g, "name", g)): float(getattr(g, "max_ratio", 1.0)) for g in all_groups_spec}

    def fit(r: RatioRange, members: Sequence[str]) -> RatioRange:
        return _feasible(r, min(feasible.get(m, 1.0) for m in members))

    dims: list[Dimension] = []
    tied: set[str] = set()
    for name, members_spec in (data.get("tie") or {}).items():
        members = _match(members_spec if isinstance(members_spec, list) else [members_spec], groups,
                         f"{where} tie '{name}'")
        clash = tied & set(members)
        if clash:
            raise ConfigError(f"{where}: group(s) {sorted(clash)} appear in more than one tie")
        tied |= set(members)
        if len({ranges[m] for m in members}) > 1:
            raise ConfigError(f"{where} tie '{name}': tied groups must share one ratio range (check per_group)")
        if len({patterns[m] for m in members}) > 1:
            raise ConfigError(f"{where} tie '{name}': tied groups must share their pattern choices "
                              "(check patterns per layer type and per_group)")
        dims.append(Dimension(str(name), tuple(members), fit(ranges[members[0]], members), patterns[members[0]]))
    dims += [Dimension(g, (g,), fit(ranges[g], [g]), patterns[g]) for g in groups if g not in tied]
    names = [d.name for d in dims]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a tie name equals a group name: rename the tie")
    importance = data.get("importance", default_importance)
    importances = tuple(importance) if isinstance(importance, (list, tuple)) else (str(importance),)
    unknown_importance = [i for i in importances if i not in IMPORTANCES]
    if unknown_importance or not importances:
        source = f"{where} importance" if "importance" in data else "prune.importance"
        raise ConfigError(f"{source} {unknown_importance or '[]'} unknown: choose from {sorted(IMPORTANCES)}")
    transformer = sorted({kinds[g] for d in dims for g in d.groups} & {"heads", "ffn"})
    if transformer:
        check_for_heads(importances, f"{where}: ")
    nm = data.get("nm", defaults.get("nm", DEFAULT_NM))
    block = data.get("block", defaults.get("block", DEFAULT_BLOCK))
    try:
        probe = GroupPlan(0.0, "channel", tuple(nm), tuple(block))
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return SearchSpace(tuple(dims), importances, probe.nm, probe.block, per_group=bool(data.get("per_group")))


def load_space(name_or_path: str, all_groups: Sequence, default_importance: str | Sequence[str] = "l2",
               defaults: Mapping | None = None) -> SearchSpace:
    path = resolve_yaml("search_spaces", str(name_or_path))
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path} is not valid YAML ({yaml_problem(exc)}): fix its syntax") from None
    too_large = yaml_size_problem(data)
    if too_large:
        raise ConfigError(f"search space {path} is too large to read ({too_large}): fix the file")
    return build_space(data, all_groups, default_importance, where=f"search space {path}", defaults=defaults)
