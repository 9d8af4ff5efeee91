"""The measurement rules every local backend shares: pin, lock, warm up, repeat until the median is
tight (or the time cap), and return the samples."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from autoprune.errors import MeasurementError
from autoprune.hw.lock import measurement_lock
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.stats import median_rel_ci

CHUNK = 10  # runs between checks of the stop rule

RunOnce = Callable[[], float]  # runs the model once, returns its latency in milliseconds


def wall_clock(run: Callable[[], object]) -> RunOnce:
    """A RunOnce that times a synchronous call with the monotonic high-resolution clock."""
    def run_once() -> float:
        t0 = time.perf_counter_ns()
        run()
        return (time.perf_counter_ns() - t0) / 1e6
    return run_once


@contextlib.contextmanager
def pinned(cores: Optional[Sequence[int]]) -> Iterator[None]:
    """Restrict the calling thread (and threads it starts) to `cores` for the duration."""
    if not cores:
        yield
        return
    if not hasattr(os, "sched_setaffinity"):
        raise MeasurementError("cpu_affinity is not supported on this OS: remove it from the profile")
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, set(cores))
    except OSError as exc:
        raise MeasurementError(f"cannot pin to cores {list(cores)} ({exc}): use core ids from "
                               f"{sorted(before)} in cpu_affinity") from None
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def stop_rule_met(samples: list[float], profile: HardwareProfile, elapsed_s: float) -> bool:
    if len(samples) >= profile.max_repeats:
        return True
    if len(samples) < profile.min_repeats:
        return False
    return median_rel_ci(np.asarray(samples)) <= profile.target_rel_ci or elapsed_s >= profile.max_seconds


def repeat_until_stable(run_once: RunOnce, profile: HardwareProfile) -> list[float]:
    """Hold the machine-wide measurement lock; `warmup_runs` untimed runs, then timed runs in chunks
    of CHUNK until the stop rule holds. The clock for `max_seconds` starts after the lock is taken."""
    samples: list[float] = []
    with measurement_lock():
        for _ in range(profile.warmup_runs):
            run_once()
        start = time.perf_counter()
        while True:
            for _ in range(min(CHUNK, profile.max_repeats - len(samples))):
                samples.append(run_once())
            if stop_rule_met(samples, profile, time.perf_counter() - start):
                return samples
