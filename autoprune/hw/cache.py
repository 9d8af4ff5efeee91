"""On-disk cache of latency results keyed by (model hash, profile hash, machine)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from autoprune.errors import MeasurementError
from autoprune.hw.fingerprint import machine_key
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.stats import LatencyStats


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class LatencyCache:
    """One JSON file per result in `directory`. A key combines the ONNX file's hash, the profile's
    digest (which includes an agent URL) and this machine's key (CPU, cores, runtime versions), so a
    cache shared between machines never returns another machine's numbers."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def key(self, onnx_path: Path, profile: HardwareProfile) -> str:
        return f"{file_digest(onnx_path)}-{profile.digest()}-{machine_key()}"

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> Optional[LatencyStats]:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return LatencyStats.from_dict(json.loads(path.read_text()))
        except (ValueError, MeasurementError):
            path.unlink(missing_ok=True)  # a damaged entry is measured again
            return None

    def put(self, key: str, stats: LatencyStats) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stats.to_dict(), indent=1))
        os.replace(tmp, path)
