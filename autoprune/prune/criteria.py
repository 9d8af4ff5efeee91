"""Importance criteria, declared once: what each needs and what it can rank.

    needs_gradients  scores use the model's gradients (calibration batches before pruning)
    scores_weights   scores single weights, so it can rank them for mask patterns (unstructured, N:M,
                     block) and for attention heads / FFN neurons; False: scores whole channels only
                     (BatchNorm scales, filter geometry), for CNN channel groups

Every compatibility check (search space, pruning engine, transformer pruner) asks these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Type

from autoprune.errors import AutopruneError, ConfigError


@dataclass(frozen=True)
class Criterion:
    name: str
    needs_gradients: bool = False
    scores_weights: bool = True


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("l2"), Criterion("l1"),
    Criterion("bn_scale", scores_weights=False), Criterion("fpgm", scores_weights=False),
    Criterion("random"),
    Criterion("taylor", needs_gradients=True), Criterion("hessian", needs_gradients=True),
    Criterion("movement", needs_gradients=True),
)}
WEIGHT_CRITERIA = tuple(n for n, c in CRITERIA.items() if c.scores_weights)
CHANNEL_ONLY = tuple(n for n, c in CRITERIA.items() if not c.scores_weights)
GRADIENT_CRITERIA = tuple(n for n, c in CRITERIA.items() if c.needs_gradients)
_INSTEAD = ", ".join(sorted(WEIGHT_CRITERIA)[:-1]) + f" or {sorted(WEIGHT_CRITERIA)[-1]}"


def needs_gradients(criterion: str) -> bool:
    c = CRITERIA.get(criterion)
    return c is not None and c.needs_gradients


def _channel_only(importances: Iterable[str]) -> list[str]:
    return [i for i in importances if i in CRITERIA and not CRITERIA[i].scores_weights]


def check_for_masks(importances: Iterable[str], patterns: Iterable[str],
                    error: Type[AutopruneError] = ConfigError) -> None:
    """Raise `error` when a criterion that scores whole channels is to rank single weights for `patterns`."""
    clash, patterns = _channel_only(importances), sorted(patterns)
    if clash and patterns:
        raise error(f"importance {clash} scores whole channels and cannot rank single weights for pattern(s) "
                    f"{patterns}: use {_INSTEAD}")


def check_for_heads(importances: Iterable[str], where: str = "",
                    error: Type[AutopruneError] = ConfigError) -> None:
    """Raise `error` when a criterion that scores whole channels is to rank attention heads / FFN neurons."""
    clash = _channel_only(importances)
    if clash:
        raise error(f"{where}importance {clash} does not apply to attention heads / FFN neurons (no BatchNorm, "
                    f"no filters): use {_INSTEAD}")


__all__ = ["CHANNEL_ONLY", "CRITERIA", "Criterion", "GRADIENT_CRITERIA", "WEIGHT_CRITERIA", "check_for_heads",
           "check_for_masks", "needs_gradients"]
