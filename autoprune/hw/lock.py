"""Machine-wide locks, so that what a search times is not disturbed by other searches on the machine.

- `measurement_lock()` is held while a model is timed: measurements on one machine never overlap.
- Optionally (AUTOPRUNE_PAUSE_TRAINING=1 in the workers' environment), training steps pause while any model
  is timed: each step holds `compute_share()`, a shared lock that a measurement takes exclusively. A step
  waits while a measurement holds the measurement lock, so a measurement waiting for the running steps to
  end is not starved by new ones (the measurement lock is the turnstile steps pass through). Off by default:
  on the development machine a worker training on the other core changed single-thread ONNX Runtime
  latencies by at most 1 % (benchmarks/contention.py, docs/BENCHMARKS.md), while pausing costs trials per
  hour. Turn it on where that benchmark shows contention (e.g. many workers on a memory-bound machine).

Both are flock(2) locks on files in AUTOPRUNE_LOCK_DIR (default: the temp directory), so they work across
processes and containers that share that directory, and a process that dies releases its locks. Each call
opens its own file descriptions, so threads of one process exclude each other too. A measurement must not be
started inside a step of the same thread (it would wait for itself); nothing in autoprune does that.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from autoprune.errors import ConfigError

MEASURE = "autoprune-measure.lock"
QUIET = "autoprune-quiet.lock"
PAUSE_TRAINING = "AUTOPRUNE_PAUSE_TRAINING"


def lock_dir() -> Path:
    return Path(os.environ.get("AUTOPRUNE_LOCK_DIR", tempfile.gettempdir()))


@contextlib.contextmanager
def _flock(name: str, mode: int) -> Iterator[None]:
    """`name` in the lock directory (created if missing, e.g. a volume path shared by containers), locked
    with `mode` (fcntl.LOCK_SH or LOCK_EX) until the block ends."""
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)   # releases the lock


def pausing_training() -> bool:
    """Whether this process's training steps pause for measurements (AUTOPRUNE_PAUSE_TRAINING=1)."""
    value = os.environ.get(PAUSE_TRAINING, "").strip().lower()
    if value not in ("", "0", "1", "false", "true", "no", "yes", "off", "on"):
        raise ConfigError(f"{PAUSE_TRAINING}={value!r} is not a switch: use 1 (training pauses while a model is "
                          "timed) or 0")
    return value in ("1", "true", "yes", "on")


@contextlib.contextmanager
def measurement_lock() -> Iterator[None]:
    """Held while a measurement runs: blocks until other measurements finish, then until the pausing training
    steps running now end; no new such step starts until the block ends. Use as `with measurement_lock():`."""
    with _flock(MEASURE, fcntl.LOCK_EX), _flock(QUIET, fcntl.LOCK_EX):
        yield


@contextlib.contextmanager
def compute_share(pause: Optional[bool] = None) -> Iterator[None]:
    """Held around one training step: when `pause` (default: AUTOPRUNE_PAUSE_TRAINING), waits while a
    measurement runs or waits for steps to end; otherwise a no-op."""
    if not (pausing_training() if pause is None else pause):
        yield
        return
    with _flock(MEASURE, fcntl.LOCK_SH):
        pass
    with _flock(QUIET, fcntl.LOCK_SH):
        yield
