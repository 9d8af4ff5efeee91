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
    lock object per call, so threads of one process exclude each other too. Use as `with measurement_lock():`."""
    return filelock.FileLock(str(lock_path()))
