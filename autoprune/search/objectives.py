"""Objectives and constraints of a search, by metric name.

Objectives (search.objectives): any of val_accuracy (maximised), latency_ms, params, macs,
onnx_bytes (minimised). Constraints (search.constraints) go through Optuna's constraint mechanism
(`trial.set_constraint`: a value <= 0 is feasible), so samplers prefer feasible regions and the
Pareto front is the feasible one. `max_accuracy_drop` is relative: val accuracy at most that far
below the baseline's, so it holds whatever accuracy the baseline turns out to have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional, Sequence, cast

Direction = Literal["minimize", "maximize"]
DIRECTIONS: dict[str, Direction] = {"val_accuracy": "maximize", "latency_ms": "minimize", "params": "minimize", "macs": "minimize",
              "onnx_bytes": "minimize"}
# constraint name -> (metric, +1 for an upper bound / -1 for a lower bound)
CONSTRAINTS = {"max_latency_ms": ("latency_ms", 1), "min_accuracy": ("val_accuracy", -1),
               "max_accuracy_drop": ("val_accuracy", -1), "max_params": ("params", 1), "max_macs": ("macs", 1),
               "max_onnx_bytes": ("onnx_bytes", 1)}
RELATIVE = {"max_accuracy_drop"}   # bound = the baseline's value of the metric minus the setting


@dataclass(frozen=True)
class Objectives:
    names: tuple[str, ...] = ("val_accuracy", "latency_ms")
    bounds: tuple[tuple[str, float], ...] = ()       # (constraint name, bound), only those set

    @classmethod
    def from_config(cls, names: Sequence[str], constraints: Any = None) -> "Objectives":
        """From `search.objectives` and `search.constraints` (a ConstraintsConfig or a plain mapping);
        names and bounds are checked by the config schema (autoprune.config.SearchConfig)."""
        from autoprune.config import ConstraintsConfig, SearchConfig
        from autoprune.schema import build, check_value, field_at, rule_of

        _, objectives = cast(tuple, field_at(SearchConfig, "objectives"))  # a field of the schema
        check_value(rule_of(objectives), list(names), "search.objectives")
        bounds = build(ConstraintsConfig, constraints, "search.constraints").bounds()
        return cls(tuple(names), tuple((k, float(v)) for k, v in bounds.items()))

    @property
    def directions(self) -> list[Direction]:
        return [DIRECTIONS[n] for n in self.names]

    def values(self, metrics: Mapping[str, float]) -> list[float]:
        return [float(metrics[n]) for n in self.names]

    def violations(self, metrics: Mapping[str, float], baseline: Optional[Mapping[str, float]] = None
                   ) -> dict[str, float]:
        """Constraint values (<= 0 is feasible), in the metric's own unit; relative bounds need the
        baseline's metrics."""
        out = {}
        for name, bound in self.bounds:
            metric, sign = CONSTRAINTS[name]
            if name in RELATIVE:
                if baseline is None:
                    raise ValueError(f"constraint {name} is relative to the baseline: pass its metrics")
                bound = float(baseline[metric]) - bound
            out[name] = sign * (float(metrics[metric]) - bound)
        return out

    def describe(self) -> dict:
        return {"objectives": list(self.names), "constraints": dict(self.bounds)}
