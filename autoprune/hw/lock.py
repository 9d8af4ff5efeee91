"""A machine-wide lock so that searches sharing one machine never time models at the same moment."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path


def lock_path() -> Path:
    return Path(os.environ.get("AUTOPRUNE_LOCK_DIR", tempfile.gettempdir())) / "autoprune-measure.lock"


@contextlib.contextmanager
def measurement_lock():
    """Exclusive flock held while a measurement runs (blocks until other measurements finish)."""
    path = lock_path()
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
