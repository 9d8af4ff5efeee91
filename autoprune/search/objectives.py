"""Objectives and constraints of a search, by metric name.

Objectives (search.objectives): any of val_accuracy (maximised), latency_ms, params, macs,
onnx_bytes (minimised). Constraints (search.constraints) go through Optuna's constraint mechanism
(`trial.set_constraint`: a value <= 0 is feasible), so samplers prefer feasible regions and the
Pareto front is the feasible one. `max_accuracy_drop` is relative: val accuracy at most that far
below the baseline's, so it holds whatever accuracy the baseline turns out to have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from autoprune.errors import ConfigError

DIRECTIONS = {"val_accuracy": "maximize", "latency_ms": "minimize", "params": "minimize", "macs": "minimize",
              "onnx_bytes": "minimize"}
# constraint name -> (metric, +1 for an upper bound / -1 for a lower bound)
CONSTRAINTS = {"max_latency_ms": ("latency_ms", 1), "min_accuracy": ("val_accuracy", -1),
               "max_accuracy_drop": ("val_accuracy", -1), "max_params": ("params", 1), "max_macs": ("macs", 1),
               "max_onnx_bytes": ("onnx_bytes", 1)}
RELATIVE = {"max_accuracy_drop"}   # bound = the baseline's value of the metric minus the setting
FRACTIONS = {"min_accuracy": "validation accuracy is a fraction, e.g. {key}=0.95",
             "max_accuracy_drop": "it is a fraction of accuracy, e.g. {key}=0.01 for 1 point"}


def _bound(name: str, value) -> float:
    """A constraint's bound as a number in its metric's range (accuracy is a fraction, the rest positive)."""
    key = f"search.constraints.{name}"
    try:
        if isinstance(value, bool):
            raise TypeError
        bound = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number: give one, or null for no bound") from None
    if name in FRACTIONS and not 0.0 <= bound <= 1.0:
        raise ConfigError(f"{key}={value} is outside [0, 1]: " + FRACTIONS[name].format(key=key))
    if name not in FRACTIONS and not bound > 0.0:
        raise ConfigError(f"{key}={value} must be > 0 (or null for no bound)")
    return bound


@dataclass(frozen=True)
class Objectives:
    names: tuple[str, ...] = ("val_accuracy", "latency_ms")
    bounds: tuple[tuple[str, float], ...] = ()       # (constraint name, bound), only those set

    @classmethod
    def from_config(cls, names: Sequence[str], constraints: Optional[Mapping] = None) -> "Objectives":
        names = tuple(names)
        unknown = [n for n in names if n not in DIRECTIONS]
        if unknown or not names:
            raise ConfigError(f"search.objectives {unknown or '[]'}: choose from {list(DIRECTIONS)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"search.objectives {list(names)} repeats a metric")
        constraints = dict(constraints or {})
        bad = sorted(set(constraints) - set(CONSTRAINTS))
        if bad:
            raise ConfigError(f"search.constraints: unknown key(s) {bad}; known: {sorted(CONSTRAINTS)}")
        bounds = tuple((k, _bound(k, v)) for k, v in constraints.items() if v is not None)
        return cls(names, bounds)

    @property
    def directions(self) -> list[str]:
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
