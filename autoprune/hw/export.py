"""Export a PyTorch model for measurement: one self-contained, checked ONNX file, plus its weights
(a state_dict, never a pickled module) and the module itself in memory for the torch backend."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

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
    utils: Any   # a private torch module (or None)
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


@contextlib.contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    """nn.MultiheadAttention / nn.TransformerEncoderLayer take a fused kernel in eval mode
    (`aten::_native_multi_head_attention`, `aten::_transformer_encoder_layer_fwd`) that has no ONNX
    export; the plain path computes the same. Switched off for the export, restored after."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def check_outputs(model: nn.Module, example_input: torch.Tensor, path: Path) -> None:
    """The ONNX file must compute what the module computes: one ONNX Runtime (CPU) run on the example
    input against one PyTorch forward, within a tolerance relative to the outputs' scale. A pruned graph
    that exports but is inconsistent (a reshape fixed to the old width, an index past a shrunk
    dimension) fails here with its reason, not later while being timed."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: example_input.cpu().numpy()})
    except Exception as exc:
        raise ExportError(f"the exported ONNX model of {type(model).__name__} does not run in ONNX Runtime "
                          f"({first_line(exc)[:300]}): the pruned graph is inconsistent") from exc
    with torch.no_grad(), _mha_fastpath_off():
        want = model(example_input)
    want = [t.detach().cpu().numpy() for t in (want if isinstance(want, (tuple, list)) else [want])
            if isinstance(t, torch.Tensor)]
    for i, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            raise ExportError(f"ONNX output {i} of {type(model).__name__} has shape {a.shape}, PyTorch's {b.shape}")
        scale = float(np.abs(b).max()) if b.size else 0.0
        err = float(np.abs(a.astype(np.float64) - b).max()) if b.size else 0.0
        if not err <= 1e-3 * max(1.0, scale):
            raise ExportError(f"ONNX output {i} of {type(model).__name__} differs from PyTorch's by {err:.3g} "
                              f"(outputs up to {scale:.3g}): the exported graph does not compute the model")


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: Path, check: bool = True) -> Path:
    """Write `model` to `path` (weights inline, no external data), validate it with onnx.checker and
    (`check`) compare its outputs with the model's (`check_outputs`: one run each).

    The TorchScript exporter (`dynamo=False`) goes first: it exports CNNs in milliseconds. Where it has no
    form for an op (an adaptive pooling whose output size does not divide its input size, as AlexNet's at
    64 px), torch's dynamo exporter (onnxscript) tries next. Either way the batch dimension is dynamic so
    the same file serves measurement and evaluation, and the MHA fast path is off (it has no ONNX form)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    try:
        _export_torchscript(model, example_input, path)
    except Exception as exc:
        first = first_line(exc)
        try:
            _export_dynamo(model, example_input, path)
        except Exception:
            raise ExportError(f"ONNX export failed for {type(model).__name__}: {first} (torch's dynamo exporter, "
                              "tried next, failed too)") from exc
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(f"ONNX export failed for {type(model).__name__}: {first_line(exc)}") from exc
    if check:
        check_outputs(model, example_input, path)
    return path


def _export_torchscript(model: nn.Module, example_input: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad(), _onnx_log_off(), _mha_fastpath_off():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example_input,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )


def _export_dynamo(model: nn.Module, example_input: torch.Tensor, path: Path) -> None:
    """torch.export + onnxscript (opset 18, its lowest), one file with the weights inline."""
    import logging

    quiet = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.no_grad(), _mha_fastpath_off(), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example_input,), str(path), dynamo=True, opset_version=18, external_data=False,
                input_names=["input"], output_names=["output"], verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), report=False,
            )
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def export_model(model: nn.Module, example_input: torch.Tensor, workdir: Path) -> ExportedModel:
    """`workdir/model.onnx` and `workdir/model.pt` (the state_dict: rebuild the architecture from the
    baseline and the plan, autoprune.candidate.CandidateEvaluator.rebuild), plus the module in memory:
    what every backend, torch included, can measure."""
    workdir = Path(workdir)
    onnx_path = export_onnx(model, example_input, workdir / "model.onnx")
    return ExportedModel(onnx_path, save_weights(model, workdir / "model.pt"), model)
