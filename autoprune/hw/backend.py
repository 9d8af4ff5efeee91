"""get_backend(profile): the LatencyBackend for a profile — its runtime's backend here, or the
remote agent when the profile has an agent_url — behind the (model, profile) result cache."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import ClassVar, Optional, Protocol

from autoprune.errors import ConfigError

from autoprune.hw.cache import LatencyCache
from autoprune.hw.export import ModelFiles, as_exported
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.stats import LatencyStats


class LatencyBackend(Protocol):
    def measure(self, model: ModelFiles, profile: HardwareProfile) -> LatencyStats: ...


class RuntimeBackend(LatencyBackend, Protocol):
    """A backend that measures on this machine with one runtime: `runtime` names it (profile.runtime),
    `create` builds it, `check_ready` raises MeasurementError when it cannot measure `profile` from here."""

    runtime: ClassVar[str]

    @classmethod
    def create(cls, cache_dir: Optional[Path] = None) -> "RuntimeBackend": ...

    @staticmethod
    def check_ready(profile: HardwareProfile) -> None: ...


# profile.runtime -> "module:class", imported on first use (a missing TensorRT fails only when asked for)
RUNTIME_BACKENDS = {
    "onnxruntime": "autoprune.hw.onnxruntime_backend:OnnxRuntimeBackend",
    "torch": "autoprune.hw.torch_backend:TorchBackend",
    "tensorrt": "autoprune.hw.tensorrt_backend:TensorRTBackend",
}


def runtime_class(runtime: str) -> type[RuntimeBackend]:
    """The backend class registered for `runtime` (imports its module)."""
    if runtime not in RUNTIME_BACKENDS:
        raise ConfigError(f"unknown runtime '{runtime}': choose one of {list(RUNTIME_BACKENDS)}")
    module, name = RUNTIME_BACKENDS[runtime].split(":")
    cls = getattr(importlib.import_module(module), name)
    assert cls.runtime == runtime, f"{RUNTIME_BACKENDS[runtime]} declares runtime {cls.runtime}"
    return cls


def runtime_backend(profile: HardwareProfile, cache_dir: Optional[Path] = None) -> LatencyBackend:
    """The backend that measures on this machine with `profile.runtime` (imports it lazily)."""
    return runtime_class(profile.runtime).create(cache_dir)


def check_ready(profile: HardwareProfile) -> None:
    """Raise MeasurementError now if `profile` cannot be measured from here (runtime, provider or GPU
    missing; agent token unset or agent down): a search checks this before it trains a baseline or
    records anything, instead of failing at its first measurement."""
    if profile.is_remote:
        from autoprune.hw.remote import check_agent
        check_agent(profile)
        return
    profile.check_cores()
    runtime_class(profile.runtime).check_ready(profile)


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
