"""Export a PyTorch model to one self-contained, checked ONNX file."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from autoprune.errors import ExportError

OPSET = 17


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Write `model` to `path` (weights inline, no external data) and validate it with onnx.checker.

    Uses the TorchScript exporter (`dynamo=False`): it needs no onnxscript and exports CNNs in
    milliseconds; the batch dimension is dynamic so the same file serves measurement and evaluation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example_input,), str(path), dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(f"ONNX export failed for {type(model).__name__}: {exc}") from exc
    return path
