"""LatencyStats: robust summary of repeated timings, plus the environment they were taken in."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from autoprune.errors import MeasurementError


def median_rel_ci(samples: np.ndarray) -> float:
    """Half-width of the distribution-free 95 % confidence interval of the median, relative to it.

    Uses order statistics: ranks n/2 ± 1.96·sqrt(n)/2 of the sorted sample."""
    n = len(samples)
    if n < 3:
        return math.inf
    s = np.sort(samples)
    half = 1.96 * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)))
    median = float(np.median(s))
    return float((s[hi] - s[lo]) / (2 * median)) if median > 0 else math.inf


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float          # std / mean
    n: int
    rel_ci: float      # 95 % CI half-width of the median, relative to the median
    fingerprint: dict = field(default_factory=dict)
    layer_ms: dict = field(default_factory=dict)   # per-layer latency (profile_layers), largest first

    @classmethod
    def from_samples(cls, samples_ms, fingerprint: dict, layer_ms: dict | None = None) -> "LatencyStats":
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise MeasurementError("no timing samples were taken: raise max_repeats/max_seconds in the profile")
        mean = float(a.mean())
        std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
        return cls(
            median_ms=float(np.median(a)),
            p90_ms=float(np.percentile(a, 90)),
            p99_ms=float(np.percentile(a, 99)),
            mean_ms=mean,
            std_ms=std,
            cv=std / mean if mean > 0 else math.inf,
            n=len(a),
            rel_ci=median_rel_ci(a),
            fingerprint=dict(fingerprint),
            layer_ms=dict(layer_ms or {}),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyStats":
        """Inverse of to_dict (cache files, agent replies); raises MeasurementError on a wrong shape."""
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            kwargs = {k: data[k] for k in names if k in data}
            stats = cls(**kwargs)
            float(stats.median_ms), int(stats.n)
        except (KeyError, TypeError, ValueError) as exc:
            raise MeasurementError(f"latency record is malformed ({exc}): delete the cache entry or "
                                   "update the agent to this autoprune version") from None
        return stats
