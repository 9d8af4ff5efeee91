"""Latency of an ONNX model on ONNX Runtime, per a HardwareProfile's measurement rules."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from autoprune.errors import MeasurementError
from autoprune.hw.fingerprint import fingerprint
from autoprune.hw.lock import measurement_lock
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.stats import LatencyStats, median_rel_ci

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_CHUNK = 10  # runs between checks of the stop rule


def make_session(onnx_path: Path, profile: HardwareProfile) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = profile.threads
    options.inter_op_num_threads = profile.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[profile.graph_optimization]
    options.log_severity_level = 3
    available = ort.get_available_providers()
    if profile.provider not in available:
        raise MeasurementError(f"ONNX Runtime provider '{profile.provider}' is not available here "
                               f"(available: {available}): pick a profile for this machine with hw=<name>")
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=[profile.provider])
    except Exception as exc:
        raise MeasurementError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc


def _feed(session: ort.InferenceSession, batch_size: int) -> dict:
    rng = np.random.default_rng(0)
    feed = {}
    for inp in session.get_inputs():
        shape = [batch_size if not isinstance(d, int) else d for d in inp.shape]
        feed[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


class OnnxRuntimeBackend:
    """LatencyBackend for ONNX Runtime: warm-up, then repeat until the median is tight or time is up."""

    def measure(self, onnx_path: Path, profile: HardwareProfile) -> LatencyStats:
        session = make_session(onnx_path, profile)
        feed = _feed(session, profile.batch_size)
        run = session.run
        samples: list[float] = []
        with measurement_lock():
            for _ in range(profile.warmup_runs):
                run(None, feed)
            start = time.perf_counter()
            while len(samples) < profile.max_repeats:
                for _ in range(_CHUNK):
                    t0 = time.perf_counter_ns()
                    run(None, feed)
                    samples.append((time.perf_counter_ns() - t0) / 1e6)
                if len(samples) >= profile.min_repeats and (
                    median_rel_ci(np.asarray(samples)) <= profile.target_rel_ci
                    or time.perf_counter() - start >= profile.max_seconds
                ):
                    break
        env = fingerprint("onnxruntime", ort.__version__, profile.provider, profile.precision, profile.threads)
        return LatencyStats.from_samples(samples, env)
