"""Latency of an ONNX model on ONNX Runtime, per a HardwareProfile's measurement rules."""

from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Optional

import onnx
import onnxruntime as ort

from autoprune.errors import MeasurementError
from autoprune.hw.export import ModelFiles, as_exported
from autoprune.hw.fingerprint import fingerprint
from autoprune.hw.inputs import input_specs, random_inputs
from autoprune.hw.lock import measurement_lock
from autoprune.hw.onnx_transforms import to_fp16
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.stats import LatencyStats
from autoprune.hw.timing import pinned, repeat_until_stable, wall_clock

log = logging.getLogger("autoprune")

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_BINDING_DEVICE = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
LAYER_PROFILE_RUNS = 20


def _device_id(profile: HardwareProfile) -> int:
    return int(profile.device.split(":")[1]) if ":" in profile.device else 0


def check_provider(profile: HardwareProfile) -> None:
    """Raise MeasurementError when this ONNX Runtime lacks the profile's execution provider."""
    available = ort.get_available_providers()
    if profile.provider not in available:
        hint = " (pip install onnxruntime-gpu for CUDA)" if "CUDA" in profile.provider else ""
        raise MeasurementError(f"ONNX Runtime provider '{profile.provider}' is not available here "
                               f"(available: {available}){hint}: pick a profile for this machine with hw=<name>")


def make_session(onnx_path: Path, profile: HardwareProfile, enable_profiling_in: Path | None = None
                 ) -> ort.InferenceSession:
    """A session configured as the profile says (threads, optimisation level, provider, precision)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = profile.thread_count()
    options.inter_op_num_threads = profile.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[profile.graph_optimization]
    options.log_severity_level = 3
    if enable_profiling_in is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(enable_profiling_in) / "ort")
    check_provider(profile)
    provider = (profile.provider, {"device_id": _device_id(profile)}) if profile.uses_cuda else profile.provider
    model: str | bytes = str(onnx_path)
    if profile.precision == "fp16":
        model = to_fp16(onnx.load(str(onnx_path))).SerializeToString()
    try:
        return ort.InferenceSession(model, options, providers=[provider])
    except Exception as exc:
        raise MeasurementError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc


def _runner(session: ort.InferenceSession, feed: dict, profile: HardwareProfile):
    """A zero-argument callable that runs the model once and returns when its outputs are ready."""
    if not profile.io_binding:
        return lambda: session.run(None, feed)
    device = _BINDING_DEVICE.get(profile.provider, "cpu")
    binding = session.io_binding()
    for name, array in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, _device_id(profile)))
    for out in session.get_outputs():
        binding.bind_output(out.name, device, _device_id(profile))

    def run() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
    return run


def layer_of(node_name: str) -> str:
    """The torch module a node belongs to, from its ONNX name scope: `/layers/layers.0/layers.0.0/
    conv2/Conv` -> `layers.0.0.conv2`, `/stem/stem.0/Conv` -> `stem.0`. Nodes the runtime added
    (layout reorders) count as `(runtime)`; top-level ops count under their op name."""
    if not node_name.startswith("/"):
        return "(runtime)"
    *scopes, op = node_name.strip("/").split("/")
    if not scopes:
        return op.split("_")[0]
    parts: list[str] = []
    for scope in scopes:  # the exporter writes Sequential children as "parent.i", attributes bare
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope
        else:
            parts.append(scope)
    return ".".join(parts)


def parse_profile(trace: list[dict]) -> dict[str, float]:
    """Mean milliseconds per run attributed to each layer, from an ONNX Runtime profiling trace."""
    runs = max(1, sum(1 for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"))
    per_layer: dict[str, float] = defaultdict(float)
    for event in trace:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            per_layer[layer_of(name[: -len("_kernel_time")])] += event.get("dur", 0) / 1000.0
    return {k: round(v / runs, 6) for k, v in sorted(per_layer.items(), key=lambda kv: -kv[1])}


def profile_layers(onnx_path: Path, profile: HardwareProfile, feed: dict) -> dict[str, float]:
    """Per-layer latency from ONNX Runtime's profiler (a separate session, so timing is unaffected)."""
    with tempfile.TemporaryDirectory() as tmp, measurement_lock():
        session = make_session(onnx_path, profile, enable_profiling_in=Path(tmp))
        for _ in range(3):
            session.run(None, feed)
        trace_file = Path(tmp) / "warmup.json"
        Path(session.end_profiling()).rename(trace_file)  # drop warm-up runs from the trace
        session = make_session(onnx_path, profile, enable_profiling_in=Path(tmp))
        for _ in range(LAYER_PROFILE_RUNS):
            session.run(None, feed)
        layers = parse_profile(json.loads(Path(session.end_profiling()).read_text()))
    total = sum(layers.values()) or 1.0
    log.info("layer latency (%s): %s", Path(onnx_path).name,
             ", ".join(f"{k} {v:.3f} ms ({100 * v / total:.0f}%)" for k, v in list(layers.items())[:5]))
    return layers


def _int8(onnx_path: Path, profile: HardwareProfile, tmp: Path) -> Path:
    """An int8 profile times the int8 model: `onnx_path` itself when it is quantized already (a search
    passes the artifact calibrated on the task's data, autoprune.hw.artifact), else a copy quantized with
    the random inputs it is timed with (same graph and kernels; the scales are for timing only)."""
    from autoprune.hw.quantize import is_quantized, quantize_int8

    if is_quantized(onnx_path):
        return onnx_path
    feed = random_inputs(input_specs(onnx_path, profile))   # quantize_int8 checks there is one input
    return quantize_int8(onnx_path, tmp / "model.int8.onnx", list(feed.values())[:1])


class OnnxRuntimeBackend:
    """LatencyBackend for ONNX Runtime: warm-up, then repeat until the median is tight or time is up."""

    runtime = "onnxruntime"

    @classmethod
    def create(cls, cache_dir: Optional[Path] = None) -> "OnnxRuntimeBackend":
        return cls()

    @staticmethod
    def check_ready(profile: HardwareProfile) -> None:
        check_provider(profile)

    def measure(self, model: ModelFiles, profile: HardwareProfile) -> LatencyStats:
        onnx_path = as_exported(model).onnx_path
        if profile.precision == "int8":
            with tempfile.TemporaryDirectory() as tmp:
                return self._measure(_int8(onnx_path, profile, Path(tmp)), profile)
        return self._measure(onnx_path, profile)

    def _measure(self, onnx_path: Path, profile: HardwareProfile) -> LatencyStats:
        with pinned(profile.cpu_affinity):
            session = make_session(onnx_path, profile)
            feed = random_inputs(input_specs(onnx_path, profile))
            samples = repeat_until_stable(wall_clock(_runner(session, feed, profile)), profile)
            layers = profile_layers(onnx_path, profile, feed) if profile.profile_layers else {}
        env = fingerprint("onnxruntime", ort.__version__, profile.provider, profile.precision,
                          profile.thread_count(), "cpu" if not profile.uses_cuda else profile.device,
                          graph_optimization=profile.graph_optimization, io_binding=profile.io_binding)
        return LatencyStats.from_samples(samples, env, layers)
