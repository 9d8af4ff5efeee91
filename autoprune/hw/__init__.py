"""Hardware profiles, ONNX export and latency measurement backends.

profile.py (HardwareProfile, load_profile) -> backend.py (get_backend: local runtime or remote
agent, behind the result cache) -> onnxruntime_backend / torch_backend / tensorrt_backend / remote,
which share timing.py (warm-up, stop rule, lock) and stats.py (LatencyStats). agent.py is the
measurement service, predictor.py the per-layer latency table, trtexec.py the trtexec import.
"""

from __future__ import annotations

from autoprune.hw.backend import LatencyBackend, Measurer, get_backend
from autoprune.hw.export import ExportedModel, export_model, export_onnx
from autoprune.hw.profile import HardwareProfile, load_profile
from autoprune.hw.stats import LatencyStats

__all__ = ["ExportedModel", "HardwareProfile", "LatencyBackend", "LatencyStats", "Measurer", "export_model",
           "export_onnx", "get_backend", "load_profile"]
