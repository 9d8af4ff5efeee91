"""PrunePlan: what to remove from a model, per prunable group. Deterministic to apply; JSON round-trip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from autoprune.errors import ConfigError

PATTERNS = ("channel",)


@dataclass(frozen=True)
class GroupPlan:
    """Fraction of a group's channels to remove, and how."""

    ratio: float
    pattern: str = "channel"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"pruning ratio {self.ratio} is outside [0, 1): use a value like 0.5")
        if self.pattern not in PATTERNS:
            raise ConfigError(f"unknown pruning pattern '{self.pattern}': choose one of {list(PATTERNS)}")


@dataclass(frozen=True)
class PrunePlan:
    """Per-group pruning decisions, keyed by the group's name (its root module's qualified name)."""

    groups: Mapping[str, GroupPlan] = field(default_factory=dict)
    importance: str = "l2"

    @classmethod
    def uniform(cls, group_names, ratio: float, importance: str = "l2") -> "PrunePlan":
        return cls({name: GroupPlan(ratio) for name in group_names}, importance)

    def ratio(self, group: str) -> float:
        plan = self.groups.get(group)
        return plan.ratio if plan else 0.0

    def to_dict(self) -> dict:
        return {
            "importance": self.importance,
            "groups": {name: {"ratio": g.ratio, "pattern": g.pattern} for name, g in sorted(self.groups.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping) -> "PrunePlan":
        groups = {name: GroupPlan(float(g["ratio"]), g.get("pattern", "channel")) for name, g in data["groups"].items()}
        return cls(groups, data.get("importance", "l2"))

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        return cls.from_dict(json.loads(text))
