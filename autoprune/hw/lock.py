"""A machine-wide lock so that searches sharing one machine never time models at the same moment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import filelock


def lock_path() -> Path:
    return Path(os.environ.get("AUTOPRUNE_LOCK_DIR", tempfile.gettempdir())) / "autoprune-measure.lock"


def measurement_lock() -> filelock.BaseFileLock:
    """Exclusive flock held while a measurement runs (blocks until other measurements finish); a new
    lock object per call, so threads of one process exclude each other too. Use as `with measurement_lock():`.
    AUTOPRUNE_LOCK_DIR is created if it does not exist yet (e.g. a volume path shared by containers)."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(path))
