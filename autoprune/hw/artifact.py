"""The deployed artifact of a hardware profile, and its accuracy measured by running it.

A profile's `precision` decides what is deployed, and so what is timed and scored:

- fp32: the exported ONNX model itself (ONNX Runtime) or the module (torch); its accuracy is PyTorch's.
- int8 (ONNX Runtime, CPU): the static QDQ int8 model (autoprune.hw.quantize), calibrated on the task's
  train split. `deploy_in_place` makes it the candidate's `model.onnx` (the fp32 export moves to
  `model.fp32.onnx`), so what is timed, scored, logged to MLflow, bundled and registered by `pick` is
  the int8 file, with nothing downstream needing to know.
- fp16, runtime torch (CUDA): the module cast to fp16 on the profile's device, as the torch backend
  times it; scored by running that module there (floating inputs in fp16, integer inputs as they are).
- fp16, ONNX Runtime CUDA / TensorRT: the fp32 ONNX file converted to fp16 when it is loaded
  (autoprune.hw.onnx_transforms.to_fp16, the TensorRT builder); scored by ONNX Runtime with that
  conversion on the profile's CUDA provider (TensorRT profiles: on CUDAExecutionProvider, which
  approximates TensorRT's fp16 kernels). NOT TESTED on a GPU: no session had onnxruntime-gpu or
  TensorRT on a GPU (too large to carry to the lent one); the conversion and the scoring path run in the
  tests on ONNX Runtime's CPU provider.

`artifact_accuracy` is top-1 accuracy of the artifact on a split, run by the profile's runtime.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from autoprune.errors import MeasurementError
from autoprune.hw.export import ExportedModel, ModelFiles, as_exported
from autoprune.hw.profile import HardwareProfile

INT8_NAME = "model.int8.onnx"
FP32_NAME = "model.fp32.onnx"   # beside an int8 model.onnx: the fp32 export it was quantized from
SCORE_BATCH = 256


def artifact_differs(profile: HardwareProfile) -> bool:
    """True when the profile deploys something other than the fp32 PyTorch model's computation (int8; fp16
    on any runtime): then its accuracy is measured on the artifact."""
    return profile.precision != "fp32"


def build_artifact(model: ModelFiles, profile: HardwareProfile,
                   calibration: Optional[Sequence[np.ndarray]] = None) -> ExportedModel:
    """The model as the profile deploys it: for int8 the quantized file (`model.int8.onnx` beside the
    fp32 one; `calibration` batches required), otherwise `model` unchanged (fp16 is converted on load)."""
    exported = as_exported(model)
    if profile.precision != "int8":
        return exported
    from autoprune.hw.quantize import quantize_int8

    if not calibration:
        raise MeasurementError("an int8 artifact needs calibration batches (the task's train split)")
    path = quantize_int8(exported.onnx_path, exported.onnx_path.with_name(INT8_NAME), calibration)
    return dataclasses.replace(exported, onnx_path=path, module=None)


def deploy_in_place(model: ModelFiles, profile: HardwareProfile,
                    calibration: Optional[Sequence[np.ndarray]] = None) -> ExportedModel:
    """`build_artifact`, then (int8) the artifact takes the exported file's name: `<dir>/model.onnx` is
    the int8 model, the fp32 export is kept as `<dir>/model.fp32.onnx`. Other precisions: unchanged."""
    exported = as_exported(model)
    if profile.precision != "int8":
        return exported
    artifact = build_artifact(exported, profile, calibration)
    fp32 = exported.onnx_path.with_name(FP32_NAME)
    exported.onnx_path.replace(fp32)
    artifact.onnx_path.replace(exported.onnx_path)
    return dataclasses.replace(artifact, onnx_path=exported.onnx_path)


def fp32_source(exported: ExportedModel) -> ExportedModel:
    """The fp32 export behind `exported` (after deploy_in_place of an int8 profile: model.fp32.onnx)."""
    fp32 = exported.onnx_path.with_name(FP32_NAME)
    return dataclasses.replace(exported, onnx_path=fp32) if fp32.is_file() else exported


def _scoring_profile(profile: HardwareProfile) -> HardwareProfile:
    """The ONNX Runtime settings the artifact is scored with: the profile's own for runtime onnxruntime;
    TensorRT fp16 profiles are scored on ONNX Runtime's CUDA provider with fp16 weights (untested here)."""
    if profile.runtime == "onnxruntime":
        return dataclasses.replace(profile, io_binding=False, profile_layers=False)
    return dataclasses.replace(profile, runtime="onnxruntime", provider="CUDAExecutionProvider", io_binding=False,
                               profile_layers=False, sparse_weights=False, agent_url=None)


Predict = Callable[[np.ndarray], np.ndarray]   # a batch of inputs -> its logits


def _onnxruntime_predict(exported: ExportedModel, profile: HardwareProfile) -> Predict:
    from autoprune.hw.onnxruntime_backend import make_session

    session = make_session(exported.onnx_path, _scoring_profile(profile))
    name = session.get_inputs()[0].name
    return lambda inputs: np.asarray(session.run(None, {name: inputs})[0])


def _torch_predict(exported: ExportedModel, profile: HardwareProfile) -> Predict:
    import torch

    from autoprune.hw.torch_backend import as_input, check_device, deployed_module, torch_dtype

    if exported.module is None:
        raise MeasurementError("scoring a runtime-torch artifact needs the PyTorch module: pass "
                               "ExportedModel(onnx_path, module=model)")
    check_device(profile)
    net, device, dtype = deployed_module(exported.module, profile), torch.device(profile.device), torch_dtype(profile)

    def predict(inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(as_input(torch.from_numpy(inputs), device, dtype)).float().cpu().numpy()
    return predict


def artifact_accuracy(model: ModelFiles, profile: HardwareProfile, dataset, batch_size: int = SCORE_BATCH) -> float:
    """Top-1 accuracy in [0, 1] of the artifact `model` on `dataset` (items `(input, label)`), run by the
    profile's runtime: ONNX Runtime as the profile configures it (threads, optimisation level, provider,
    fp16 on load), or for runtime torch the module (`model.module`) on the profile's device and precision."""
    import torch

    exported = as_exported(model)
    predict = (_torch_predict if profile.runtime == "torch" else _onnxruntime_predict)(exported, profile)
    correct = total = 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        inputs = torch.stack([torch.as_tensor(x) for x, _ in items]).cpu().numpy()
        labels = np.asarray([int(y) for _, y in items])
        correct += int((predict(inputs).argmax(axis=1) == labels).sum())
        total += len(items)
    if total == 0:
        raise MeasurementError("cannot score the artifact on an empty split")
    return correct / total
