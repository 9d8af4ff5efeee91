"""The inputs a model is timed with: names, shapes (batch size and per-sample shape from the profile
or the ONNX file) and deterministic random data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import onnx
from onnx import helper

from autoprune.errors import MeasurementError
from autoprune.hw.profile import HardwareProfile


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def input_specs(onnx_path: Path, profile: HardwareProfile) -> list[InputSpec]:
    """One spec per graph input: dim 0 is the profile's batch size; the rest come from the ONNX
    file's static dims, or from `profile.input_shape` (required where the file's dims are dynamic)."""
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise MeasurementError(f"cannot read ONNX model {onnx_path}: {exc}") from None
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        tensor = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if profile.input_shape is not None:
            if len(dims) != len(profile.input_shape) + 1:
                raise MeasurementError(
                    f"profile '{profile.name}' input_shape {list(profile.input_shape)} has {len(profile.input_shape)} "
                    f"dims but input '{inp.name}' has {len(dims) - 1} per sample: fix input_shape")
            sample = list(profile.input_shape)
        else:
            sample = cast(list[int], dims[1:])  # checked just below: no dynamic (None) dim
            if any(d is None for d in sample):
                raise MeasurementError(f"input '{inp.name}' of {onnx_path.name} has dynamic dims {dims}: "
                                       f"set input_shape in hardware profile '{profile.name}'")
        specs.append(InputSpec(inp.name, (profile.batch_size, *sample),
                               np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))))
    return specs


def random_inputs(specs: list[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        if np.issubdtype(spec.dtype, np.floating):
            feed[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
        else:
            feed[spec.name] = np.zeros(spec.shape, dtype=spec.dtype)
    return feed
