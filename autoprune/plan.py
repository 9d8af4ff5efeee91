"""PrunePlan: what to remove from a model, per prunable group. Deterministic to apply; JSON round-trip.

A group's pattern says *how* its ratio is applied:

    channel       remove `ratio` of the group's channels / neurons / attention heads, physically (default)
    unstructured  zero `ratio` of the weights of the group's layers, by importance (layer-wise, or one
                  percentile over all unstructured groups with prune.unstructured_scope=global)
    nm            N:M semi-structured: in every M consecutive input weights keep the N most important
                  (sparsity 1 - N/M, fixed by N and M; any ratio > 0 turns it on, ratio 0 leaves it dense)
    block         zero `ratio` of the (rows x cols) blocks of each layer's 2-D weight view, whole

Non-channel patterns keep the tensors dense (zeros in place): see autoprune.prune.sparsity for what
they buy (a smaller sparse encoding; no speed-up on dense kernels).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Mapping

from autoprune.errors import ConfigError

PATTERNS = ("channel", "unstructured", "nm", "block")
MASK_PATTERNS = ("unstructured", "nm", "block")   # zeros in dense tensors (masks), not physical removal
DEFAULT_NM = (2, 4)
DEFAULT_BLOCK = (1, 4)


def kept_channels(channels: int, ratio: float, round_to: int = 1) -> int:
    """Channels left after removing `ratio` of `channels`, rounded to the nearest multiple of
    `round_to` (half up) and never below one multiple nor above `channels`."""
    step = max(1, min(round_to, channels))
    kept = math.floor(channels * (1.0 - ratio) / step + 0.5) * step
    return int(min(channels, max(step, kept)))


def _pair(value, what: str, example: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value)
        if a != float(value[0]) or b != float(value[1]):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r} must be two integers, e.g. {example}") from None
    return a, b


@dataclass(frozen=True)
class GroupPlan:
    """Fraction of a group to remove, and how (pattern and its options)."""

    ratio: float
    pattern: str = "channel"
    nm: tuple[int, int] = DEFAULT_NM          # (N, M) of pattern "nm"
    block: tuple[int, int] = DEFAULT_BLOCK    # (rows, cols) of pattern "block"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"pruning ratio {self.ratio} is outside [0, 1): use a value like 0.5")
        if self.pattern not in PATTERNS:
            raise ConfigError(f"unknown pruning pattern '{self.pattern}': choose one of {list(PATTERNS)}")
        n, m = _pair(self.nm, "N:M option nm", "[2, 4]")
        if not 1 <= n < m:
            raise ConfigError(f"N:M option nm={[n, m]} needs 1 <= N < M: use e.g. [2, 4] (2:4) or [1, 4]")
        rows, cols = _pair(self.block, "block shape", "[1, 4] or [4, 4]")
        if rows < 1 or cols < 1 or rows * cols < 2:
            raise ConfigError(f"block shape {[rows, cols]} must be positive and hold 2 weights or more: "
                              "use e.g. [1, 4] or [4, 4]")
        object.__setattr__(self, "nm", (n, m))
        object.__setattr__(self, "block", (rows, cols))

    @property
    def is_mask(self) -> bool:
        """True for patterns that zero weights in place instead of removing channels."""
        return self.pattern in MASK_PATTERNS

    @property
    def active(self) -> bool:
        return self.ratio > 0.0

    @property
    def sparsity(self) -> float:
        """Fraction of the group's prunable weights this plan zeroes (channels: of its channels)."""
        if not self.active:
            return 0.0
        return 1.0 - self.nm[0] / self.nm[1] if self.pattern == "nm" else self.ratio

    def to_dict(self) -> dict:
        out = {"ratio": self.ratio, "pattern": self.pattern}
        if self.pattern == "nm":
            out["nm"] = list(self.nm)
        if self.pattern == "block":
            out["block"] = list(self.block)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "GroupPlan":
        return cls(float(data["ratio"]), data.get("pattern", "channel"), tuple(data.get("nm", DEFAULT_NM)),
                   tuple(data.get("block", DEFAULT_BLOCK)))


@dataclass(frozen=True)
class PrunePlan:
    """Per-group pruning decisions, keyed by the group's name (its root module's qualified name)."""

    groups: Mapping[str, GroupPlan] = field(default_factory=dict)
    importance: str = "l2"

    @classmethod
    def uniform(cls, group_names, ratio: float, importance: str = "l2", pattern: str = "channel",
                nm: tuple[int, int] = DEFAULT_NM, block: tuple[int, int] = DEFAULT_BLOCK) -> "PrunePlan":
        return cls({name: GroupPlan(ratio, pattern, nm, block) for name in group_names}, importance)

    def ratio(self, group: str) -> float:
        plan = self.groups.get(group)
        return plan.ratio if plan else 0.0

    def pattern(self, group: str) -> str:
        plan = self.groups.get(group)
        return plan.pattern if plan else "channel"

    def widths(self, channels: Mapping[str, int], round_to: int = 1) -> dict[str, int]:
        """Each group's width under this plan, from `channels` (the unpruned widths): channel pruning narrows
        a group (`kept_channels`, rounded to `round_to`); masks (unstructured, N:M, block) leave it whole."""
        return {g: ch if g in self.groups and self.groups[g].is_mask else kept_channels(ch, self.ratio(g), round_to)
                for g, ch in channels.items()}

    @property
    def patterns(self) -> set[str]:
        """Patterns of the groups this plan actually prunes (ratio > 0)."""
        return {g.pattern for g in self.groups.values() if g.active}

    def channel_part(self) -> "PrunePlan":
        """The groups pruned physically (pattern channel)."""
        return PrunePlan({n: g for n, g in self.groups.items() if not g.is_mask}, self.importance)

    def mask_part(self) -> "PrunePlan":
        """The groups pruned with masks (unstructured, nm, block)."""
        return PrunePlan({n: g for n, g in self.groups.items() if g.is_mask}, self.importance)

    def scaled(self, fraction: float) -> "PrunePlan":
        """The same plan part-way, for schedules' intermediate steps: every ratio multiplied by `fraction`
        in [0, 1]; an N:M group goes from M:M (dense) towards N:M, with M - floor((M - N) * fraction) kept
        per M (dense while that is M)."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        groups = {}
        for name, g in self.groups.items():
            if g.pattern == "nm":
                n, m = g.nm
                kept = m - int((m - n) * fraction + 1e-9)
                groups[name] = GroupPlan(g.ratio if kept < m else 0.0, "nm", (min(kept, m - 1), m), g.block)
            else:
                groups[name] = GroupPlan(min(g.ratio * fraction, g.ratio), g.pattern, g.nm, g.block)
        return PrunePlan(groups, self.importance)

    def to_dict(self) -> dict:
        return {
            "importance": self.importance,
            "groups": {name: g.to_dict() for name, g in sorted(self.groups.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping) -> "PrunePlan":
        groups = {name: GroupPlan.from_dict(g) for name, g in data["groups"].items()}
        return cls(groups, data.get("importance", "l2"))

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        return cls.from_dict(json.loads(text))
