"""get_backend(profile): the LatencyBackend for a profile — its runtime's backend here, or the
remote agent when the profile has an agent_url — behind the (model, profile) result cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

from autoprune.hw.cache import LatencyCache
from autoprune.hw.export import ModelFiles, as_exported
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.stats import LatencyStats


class LatencyBackend(Protocol):
    def measure(self, model: ModelFiles, profile: HardwareProfile) -> LatencyStats: ...


def runtime_backend(profile: HardwareProfile, cache_dir: Optional[Path] = None) -> LatencyBackend:
    """The backend that measures on this machine with `profile.runtime` (imports it lazily)."""
    if profile.runtime == "onnxruntime":
        from autoprune.hw.onnxruntime_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend()
    if profile.runtime == "torch":
        from autoprune.hw.torch_backend import TorchBackend
        return TorchBackend()
    from autoprune.hw.tensorrt_backend import TensorRTBackend
    return TensorRTBackend(Path(cache_dir) / "tensorrt" if cache_dir else None)


def check_ready(profile: HardwareProfile) -> None:
    """Raise MeasurementError now if `profile` cannot be measured from here (runtime, provider or GPU
    missing; agent token unset or agent down): a search checks this before it trains a baseline or
    records anything, instead of failing at its first measurement."""
    if profile.is_remote:
        from autoprune.hw.remote import check_agent
        check_agent(profile)
        return
    profile.check_cores()
    if profile.runtime == "onnxruntime":
        from autoprune.hw.onnxruntime_backend import check_provider
        check_provider(profile)
    elif profile.runtime == "torch":
        from autoprune.hw.torch_backend import check_device
        check_device(profile)
    else:
        from autoprune.hw.tensorrt_backend import check_tensorrt
        check_tensorrt()


class Measurer:
    """What get_backend returns. `measure(model, profile)` gives the cached result for the same ONNX
    file, profile and machine when there is one; `fresh=True` always measures (use it for the
    baseline, so speedups are ratios of numbers taken in the same run) and refreshes the cache."""

    def __init__(self, backend: LatencyBackend, cache: Optional[LatencyCache] = None):
        self.backend = backend
        self.cache = cache

    def measure(self, model: ModelFiles, profile: HardwareProfile, *, fresh: bool = False) -> LatencyStats:
        if self.cache is None:
            return self.backend.measure(model, profile)
        key = self.cache.key(as_exported(model).onnx_path, profile)
        if not fresh:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        stats = self.backend.measure(model, profile)
        self.cache.put(key, stats)
        return stats


def get_backend(profile: HardwareProfile, *, cache_dir: Optional[Path] = None) -> Measurer:
    """The LatencyBackend for `profile`. With `cache_dir`, results are cached in
    `cache_dir/latency/` (and TensorRT engines in `cache_dir/tensorrt/`); without, nothing is cached
    (TensorRT engines then go to ~/.cache/autoprune/tensorrt)."""
    if profile.is_remote:
        from autoprune.hw.remote import RemoteBackend
        backend: LatencyBackend = RemoteBackend()
    else:
        backend = runtime_backend(profile, cache_dir)
    return Measurer(backend, LatencyCache(Path(cache_dir) / "latency") if cache_dir else None)
