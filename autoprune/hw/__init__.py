"""Hardware profiles, ONNX export and latency measurement backends."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from autoprune.hw.export import export_onnx
from autoprune.hw.profile import HardwareProfile, load_profile
from autoprune.hw.stats import LatencyStats


class LatencyBackend(Protocol):
    def measure(self, onnx_path: Path, profile: HardwareProfile) -> LatencyStats: ...


def get_backend(profile: HardwareProfile) -> LatencyBackend:
    """The backend that measures on `profile`'s runtime (validated when the profile loads)."""
    from autoprune.hw.onnxruntime_backend import OnnxRuntimeBackend

    return {"onnxruntime": OnnxRuntimeBackend}[profile.runtime]()


__all__ = ["HardwareProfile", "LatencyBackend", "LatencyStats", "export_onnx", "get_backend", "load_profile"]
