"""Export a PyTorch model for measurement: one self-contained, checked ONNX file, plus its weights
(a state_dict, never a pickled module) and the module itself in memory for the torch backend."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import onnx
import torch
import torch.nn as nn

from autoprune.errors import ExportError, first_line
from autoprune.weights import save_weights

OPSET = 17


@dataclass(frozen=True)
class ExportedModel:
    """A candidate as the backends take it: the ONNX file; with export_model also its weights file
    (state_dict) and the module in memory (what the torch backend times: nothing is unpickled)."""

    onnx_path: Path
    weights_path: Optional[Path] = None
    module: Optional[nn.Module] = field(default=None, compare=False, repr=False)


ModelFiles = Union[Path, str, ExportedModel]


def as_exported(model: ModelFiles) -> ExportedModel:
    return model if isinstance(model, ExportedModel) else ExportedModel(Path(model))


@contextlib.contextmanager
def _onnx_log_off() -> Iterator[None]:
    """torch's TorchScript exporter turns its C++ log on for every export (it tests the function
    `_jit_is_onnx_log_enabled` instead of calling it), so a failed export prints the whole TorchScript
    graph on stderr. Keep the log off: the ExportError says what failed."""
    try:
        from torch.onnx._internal.torchscript_exporter import utils
    except ImportError:  # another torch layout: nothing to switch off
        utils = None
    original = getattr(utils, "setup_onnx_logging", None)
    if original is not None:
        utils.setup_onnx_logging = lambda verbose: contextlib.nullcontext()
    try:
        yield
    finally:
        if original is not None:
            utils.setup_onnx_logging = original


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Write `model` to `path` (weights inline, no external data) and validate it with onnx.checker.

    Uses the TorchScript exporter (`dynamo=False`): it needs no onnxscript and exports CNNs in
    milliseconds; the batch dimension is dynamic so the same file serves measurement and evaluation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _onnx_log_off():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example_input,), str(path), dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(f"ONNX export failed for {type(model).__name__}: {first_line(exc)}") from exc
    return path


def export_model(model: nn.Module, example_input: torch.Tensor, workdir: Path) -> ExportedModel:
    """`workdir/model.onnx` and `workdir/model.pt` (the state_dict: rebuild the architecture from the
    baseline and the plan, autoprune.candidate.CandidateEvaluator.rebuild), plus the module in memory:
    what every backend, torch included, can measure."""
    workdir = Path(workdir)
    onnx_path = export_onnx(model, example_input, workdir / "model.onnx")
    return ExportedModel(onnx_path, save_weights(model, workdir / "model.pt"), model)
