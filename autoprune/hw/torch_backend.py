"""Latency of the PyTorch module itself, eager (optionally replayed as a CUDA graph), on CPU or CUDA:
for GPUs without ONNX Runtime GPU or TensorRT."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from autoprune.errors import MeasurementError
from autoprune.hw.export import ModelFiles, as_exported
from autoprune.hw.fingerprint import fingerprint
from autoprune.hw.inputs import input_specs, random_inputs
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.stats import LatencyStats
from autoprune.hw.timing import RunOnce, pinned, repeat_until_stable, wall_clock


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cuda_event_timer(run: Callable[[], object]) -> RunOnce:
    """A RunOnce timed on the GPU with CUDA events (what the kernels took, not the launch overhead)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run_once() -> float:
        start.record()
        run()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    return run_once


def cuda_graph(net: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Capture one forward pass as a CUDA graph; returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            net(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        net(x)
    return graph.replay


def torch_dtype(profile: HardwareProfile) -> torch.dtype:
    """The dtype the profile runs a module's weights and floating inputs in."""
    return torch.float16 if profile.precision == "fp16" else torch.float32


def as_input(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`x` on `device`, in `dtype` when it is floating point; integer inputs (token ids) keep their type."""
    return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device=device)


def deployed_module(module: torch.nn.Module, profile: HardwareProfile) -> torch.nn.Module:
    """A copy of `module` on the profile's device in its precision, in eval mode (the caller's stays as is)."""
    return copy.deepcopy(module).to(device=torch.device(profile.device), dtype=torch_dtype(profile)).eval()


def check_device(profile: HardwareProfile) -> None:
    """Raise MeasurementError when the profile's device is a GPU this torch cannot see."""
    if torch.device(profile.device).type == "cuda" and not torch.cuda.is_available():
        raise MeasurementError(f"profile '{profile.name}' needs CUDA but this torch ({torch.__version__}) sees "
                               "no GPU: install a CUDA build of torch or pick a CPU profile (hw=cpu-ort-1t)")


class TorchBackend:
    """LatencyBackend for torch eager mode; needs the module in memory (ExportedModel.module)."""

    runtime = "torch"

    @classmethod
    def create(cls, cache_dir: Optional[Path] = None) -> "TorchBackend":
        return cls()

    @staticmethod
    def check_ready(profile: HardwareProfile) -> None:
        check_device(profile)

    def measure(self, model: ModelFiles, profile: HardwareProfile) -> LatencyStats:
        exported = as_exported(model)
        if exported.module is None:
            raise MeasurementError("runtime torch needs the PyTorch module, not only the ONNX file: pass "
                                   "ExportedModel(onnx_path, module=model) (autoprune.hw.export_model gives both)")
        check_device(profile)
        device = torch.device(profile.device)
        net = deployed_module(exported.module, profile)
        specs = input_specs(exported.onnx_path, profile)
        if len(specs) != 1:
            raise MeasurementError(f"runtime torch times single-input models; this one has {len(specs)} inputs: "
                                   "use runtime onnxruntime")
        x = as_input(torch.from_numpy(random_inputs(specs)[specs[0].name]), device, torch_dtype(profile))
        with pinned(profile.cpu_affinity), torch_threads(profile.thread_count()), torch.inference_mode():
            if device.type == "cuda":
                with torch.cuda.device(torch.cuda.current_device() if device.index is None else device.index):
                    forward = cuda_graph(net, x) if profile.cuda_graphs else (lambda: net(x))
                    samples = repeat_until_stable(cuda_event_timer(forward), profile)
            else:
                samples = repeat_until_stable(wall_clock(lambda: net(x)), profile)
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        env = fingerprint("torch", torch.__version__, "cuda-graph" if profile.cuda_graphs else "eager",
                          profile.precision, profile.thread_count(), profile.device, device_name=device_name)
        return LatencyStats.from_samples(samples, env)
