"""Latency of an ONNX model as a TensorRT engine, timed with CUDA events.

UNTESTED ON THE DEVELOPMENT MACHINE (it has no GPU and no TensorRT): the build and timing code
follows the TensorRT 10/11 Python API and is exercised only on a machine with both. The parts that
need no GPU (precision strategy, fp16 conversion, 2:4 sparsification, trtexec import) are unit-tested.

- Build: ONNX -> `trt.OnnxParser` -> `build_serialized_network`, with a persistent timing cache
  (tactic timings reused across builds) and an engine cache keyed by model, profile and GPU.
- Precision: TensorRT 10 builds fp16 with `BuilderFlag.FP16` from the fp32 ONNX; TensorRT 11 removed
  that flag (networks are strongly typed), so fp16 comes from an fp16 ONNX (onnx_transforms.to_fp16).
- Sparsity (`sparse_weights: true`): weights are rewritten to the 2:4 pattern and
  `BuilderFlag.SPARSE_WEIGHTS` lets TensorRT pick sparse tensor-core tactics. This times what a
  2:4-sparse version of the candidate would run at; its accuracy is not evaluated.
- Timing: `execute_async_v3` on a CUDA stream, CUDA events around each run (device buffers and
  events come from torch, which must be a CUDA build).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import onnx

from autoprune.errors import MeasurementError
from autoprune.hw.export import ModelFiles, as_exported
from autoprune.hw.fingerprint import fingerprint
from autoprune.hw.inputs import input_specs
from autoprune.hw.lock import measurement_lock
from autoprune.hw.onnx_transforms import sparsify_2_4, to_fp16
from autoprune.hw.profile import HardwareProfile
from autoprune.hw.stats import LatencyStats
from autoprune.hw.timing import repeat_until_stable

INSTALL_HINT = ("TensorRT is not installed: `pip install tensorrt` (TensorRT 10 or 11, with a CUDA build of "
                "torch) on the machine with the GPU, or measure there with `python -m autoprune agent` "
                "or import `trtexec --exportTimes` JSON (autoprune.hw.trtexec)")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise MeasurementError(INSTALL_HINT) from None
    return trt


def check_tensorrt():
    """The tensorrt module, once TensorRT and a CUDA build of torch that sees the GPU are both here;
    MeasurementError naming what to install otherwise."""
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise MeasurementError("TensorRT timing needs a CUDA build of torch that sees the GPU: "
                               "install one (pip install torch --index-url <CUDA wheel index>)")
    return trt


@dataclass(frozen=True)
class TensorRTEngine:
    """A serialized engine and what it runs on only: this TensorRT version and this GPU model."""

    data: bytes
    trt_version: str
    gpu: str
    precision: str

    def describe(self) -> dict:
        return {"tensorrt": self.trt_version, "gpu": self.gpu, "precision": self.precision, "bytes": len(self.data)}


@dataclass(frozen=True)
class PrecisionPlan:
    fp16_onnx: bool        # convert the model's weights and arithmetic to fp16 before parsing
    fp16_flag: bool        # set BuilderFlag.FP16 (weak typing, TensorRT <= 10)
    strongly_typed: bool   # create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED


def precision_plan(trt_version: str, has_fp16_flag: bool, precision: str) -> PrecisionPlan:
    """How to get `precision` out of this TensorRT: 11+ (or any build without the FP16 flag) is
    strongly typed and takes fp16 from the model; 10 uses the FP16 builder flag."""
    major = int(str(trt_version).split(".")[0])
    if precision == "fp32":
        return PrecisionPlan(False, False, False)
    if major >= 11 or not has_fp16_flag:
        return PrecisionPlan(True, False, True)
    return PrecisionPlan(False, True, False)


def default_engine_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "autoprune" / "tensorrt"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def prepare_onnx(onnx_path: Path, profile: HardwareProfile, plan: PrecisionPlan) -> bytes:
    """The ONNX bytes TensorRT parses: 2:4-sparsified and/or fp16 as the profile and version need."""
    model = onnx.load(str(onnx_path))
    if profile.sparse_weights:
        model = sparsify_2_4(model)
    if plan.fp16_onnx:
        model = to_fp16(model)
    return model.SerializeToString()


class TensorRTBackend:
    """LatencyBackend for TensorRT (see module docstring; untested without a GPU)."""

    runtime = "tensorrt"

    def __init__(self, engine_dir: Optional[Path] = None):
        self.engine_dir = Path(engine_dir) if engine_dir else default_engine_dir()

    @classmethod
    def create(cls, cache_dir: Optional[Path] = None) -> "TensorRTBackend":
        """Engines cached in `cache_dir/tensorrt/` (without: ~/.cache/autoprune/tensorrt)."""
        return cls(Path(cache_dir) / "tensorrt" if cache_dir else None)

    @staticmethod
    def check_ready(profile: HardwareProfile) -> None:
        check_tensorrt()

    def _build(self, trt, model_bytes: bytes, profile: HardwareProfile, plan: PrecisionPlan,
               specs, gpu: str) -> bytes:
        build_settings = repr([profile.precision, profile.sparse_weights, profile.workspace_mb,
                               [s.shape for s in specs], plan, trt.__version__, gpu])
        key = hashlib.sha256(model_bytes + build_settings.encode()).hexdigest()[:24]
        engine_file = self.engine_dir / f"{key}.engine"
        if engine_file.is_file():
            return engine_file.read_bytes()
        self.engine_dir.mkdir(parents=True, exist_ok=True)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        if plan.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(model_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise MeasurementError(f"TensorRT cannot parse the ONNX model: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mb << 20)
        if plan.fp16_flag:
            config.set_flag(trt.BuilderFlag.FP16)
        if profile.sparse_weights:
            if not hasattr(trt.BuilderFlag, "SPARSE_WEIGHTS"):
                raise MeasurementError(f"TensorRT {trt.__version__} has no SPARSE_WEIGHTS flag: "
                                       "use a profile without sparse_weights")
            config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        gpu_key = hashlib.sha1(gpu.encode()).hexdigest()[:8]
        timing_file = self.engine_dir / f"timing-{trt.__version__}-{gpu_key}.cache"
        timing_cache = config.create_timing_cache(timing_file.read_bytes() if timing_file.is_file() else b"")
        config.set_timing_cache(timing_cache, False)
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        dynamic = [t.name for t in inputs if -1 in tuple(t.shape)]
        if dynamic:  # fixed shapes: min = opt = max = the profile's batch and input shape
            opt = builder.create_optimization_profile()
            for spec in specs:
                if spec.name in dynamic:
                    opt.set_shape(spec.name, spec.shape, spec.shape, spec.shape)
            config.add_optimization_profile(opt)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise MeasurementError("TensorRT failed to build an engine (see its log above): lower "
                                   "batch_size or raise workspace_mb in the profile")
        _atomic_write(timing_file, bytes(config.get_timing_cache().serialize()))
        engine = bytes(serialized)
        _atomic_write(engine_file, engine)
        return engine

    def build_engine(self, onnx_path: Path, profile: HardwareProfile) -> TensorRTEngine:
        """The engine of an ONNX file for `profile`, built as `measure` builds what it times (from the
        engine cache when it holds it). `pick` saves it next to the exported ONNX. UNTESTED HERE (no GPU):
        tests/test_modes.py::test_pick_on_a_tensorrt_profile_saves_and_logs_its_engine runs it on a GPU."""
        trt = check_tensorrt()
        import torch

        device = torch.device(profile.device)
        torch.cuda.set_device(device)
        gpu = torch.cuda.get_device_name(device)
        plan = precision_plan(trt.__version__, hasattr(trt.BuilderFlag, "FP16"), profile.precision)
        specs = input_specs(onnx_path, profile)
        with measurement_lock():  # tactic timing uses the GPU: not while another search times on it
            data = self._build(trt, prepare_onnx(onnx_path, profile, plan), profile, plan, specs, gpu)
        return TensorRTEngine(data, trt.__version__, gpu, profile.precision)

    def measure(self, model: ModelFiles, profile: HardwareProfile) -> LatencyStats:
        trt = check_tensorrt()
        import torch

        device = torch.device(profile.device)
        onnx_path = as_exported(model).onnx_path
        plan = precision_plan(trt.__version__, hasattr(trt.BuilderFlag, "FP16"), profile.precision)
        specs = input_specs(onnx_path, profile)
        built = self.build_engine(onnx_path, profile)
        engine_bytes, gpu = built.data, built.gpu

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise MeasurementError("TensorRT cannot load the cached engine: delete "
                                   f"{self.engine_dir} and measure again")
        context = engine.create_execution_context()
        shapes = {s.name: s.shape for s in specs}
        buffers = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, shapes[name])
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = _torch_dtype(trt, torch, engine.get_tensor_dtype(name))
            tensor = torch.randn(tuple(context.get_tensor_shape(name)), device=device).to(dtype)
            buffers.append(tensor)  # kept alive while the context uses its address
            context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.Stream(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run_once() -> float:
            start.record(stream)
            if not context.execute_async_v3(stream.cuda_stream):
                raise MeasurementError("TensorRT execution failed (see its log above)")
            end.record(stream)
            end.synchronize()
            return float(start.elapsed_time(end))

        samples = repeat_until_stable(run_once, profile)
        env = fingerprint("tensorrt", trt.__version__, "tensorrt", profile.precision, profile.thread_count(),
                          profile.device, device_name=gpu, sparse_weights=profile.sparse_weights,
                          strongly_typed=plan.strongly_typed)
        return LatencyStats.from_samples(samples, env)


def _torch_dtype(trt, torch, dtype):
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
             "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}
    for name, torch_dtype in table.items():
        if getattr(trt.DataType, name, None) == dtype:
            return torch_dtype
    raise MeasurementError(f"TensorRT tensor type {dtype} is not supported by autoprune's timing: use fp32 inputs")
