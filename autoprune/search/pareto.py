"""Pareto front utilities for (maximise accuracy, minimise latency)-style objectives."""

from __future__ import annotations

from typing import Sequence


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True if `a` is at least as good as `b` everywhere and better somewhere."""
    better = False
    for x, y, d in zip(a, b, directions):
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def non_dominated(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (duplicates all kept)."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, directions) for j, q in enumerate(points) if j != i)]


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by (accuracy ↑, latency ↓) points and bounded by `reference` = (min acc, max latency)."""
    ref_acc, ref_lat = reference
    pts = sorted({(a, l) for a, l in points if a > ref_acc and l < ref_lat}, key=lambda p: p[1])
    area, best_acc = 0.0, ref_acc
    for i, (acc, lat) in enumerate(pts):
        best_acc = max(best_acc, acc)
        next_lat = pts[i + 1][1] if i + 1 < len(pts) else ref_lat
        area += (best_acc - ref_acc) * (next_lat - lat)
    return area


def normalized_hypervolume(points: Sequence[tuple[float, float]], baseline_accuracy: float,
                           baseline_latency: float, max_drop: float = 0.1) -> float:
    """Hypervolume of (accuracy, latency) points in the box [baseline_accuracy - max_drop, ∞) ×
    [0, baseline_latency], divided by the box's area: 0 = nothing useful found, 1 = a model with
    zero latency at no accuracy loss. Comparable across searches of the same task and profile."""
    reference = (baseline_accuracy - max_drop, baseline_latency)
    return hypervolume_2d(points, reference) / (max_drop * baseline_latency)
