"""int8 ONNX models for ONNX Runtime on the CPU: static QDQ quantization with ONNX Runtime's own
quantizer (`onnxruntime.quantization.quantize_static`), per-channel int8 weights, uint8 activations
whose ranges come from calibration batches (MinMax).

Which operators are quantized depends on the graph (`ops_to_quantize`): a convolutional network gets
every operator ONNX Runtime can quantize (Add, Relu, pooling too: the activations stay int8 between
convolutions); a graph with attention or layer norm (Softmax, LayerNormalization) gets only its
matrix products (MatMul, Gemm, Conv), ONNX Runtime's advice for transformers. Measured on 2026-12-04
(`benchmarks/int8_recipe.py`, docs/BENCHMARKS.md): the pretrained MiniLM task quantized everywhere
scored 93.75 % test (fp32 100 %), matrix products only 100 % at the same latency (3.32 against
3.45 ms); leaving out LayerNormalization, Softmax, Gather, Add or Mul/Div alone did not recover it
(93.75-96.88 %). The digits ResNet quantized everywhere runs 0.302 ms, matrix products only 0.333 ms,
at equal accuracy.

    quantize_int8(Path("model.onnx"), Path("model.int8.onnx"), [batch0, batch1, ...])

The calibration batches are real inputs (the task's train split, `calibration_arrays`); where none
are at hand (`python -m autoprune measure` of a bare ONNX file, a baseline timed alone) the backend
calibrates on the random inputs it times with: the graph, and so the latency, is the same; only the
scales differ, so such a file is for timing, never for scoring.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import onnx

from autoprune.errors import MeasurementError, first_line

log = logging.getLogger("autoprune")

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
MATRIX_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")   # what a transformer's int8 model quantizes
ATTENTION_OPS = frozenset({"Softmax", "LayerNormalization", "Attention", "MultiHeadAttention"})
CALIBRATION_BATCHES = 8      # batches of the train split the activation ranges are taken from
CALIBRATION_BATCH_SIZE = 32


def is_quantized(model: onnx.ModelProto | Path | str) -> bool:
    """True when the graph holds QDQ or QLinear* nodes (it is an int8 model already)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    return any(n.op_type in QDQ_OPS or n.op_type.startswith("QLinear") for n in proto.graph.node)


def ops_to_quantize(model: onnx.ModelProto) -> Optional[list[str]]:
    """The operator types to quantize in `model`: None (ONNX Runtime's default, every operator it can)
    for graphs without attention or layer norm; only the matrix products (MATRIX_OPS) for graphs with
    them, whose elementwise operators lose accuracy in uint8 (see the module's note)."""
    if any(n.op_type in ATTENTION_OPS for n in model.graph.node):
        return list(MATRIX_OPS)
    return None


def _input_name(model: onnx.ModelProto, onnx_path: Path) -> str:
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if len(names) != 1:
        raise MeasurementError(f"int8 quantization takes models with one input; {onnx_path.name} has {names}: "
                               "use precision fp32 for this model")
    return names[0]


def _reader(name: str, batches: Iterable[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        """Feeds the calibration batches to ONNX Runtime's calibrator, one `{input: batch}` at a time."""

        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> Optional[dict]:
            batch = next(self._it, None)
            return None if batch is None else {name: np.ascontiguousarray(batch)}

    return _Batches()


def quantize_int8(onnx_path: Path, out_path: Path, calibration: Sequence[np.ndarray],
                  op_types: Optional[Sequence[str]] = None) -> Path:
    """Write the static int8 (QDQ, per-channel weights) version of `onnx_path` to `out_path`.

    `calibration`: input batches (numpy, the model's input dtype) the activation ranges are measured on.
    `op_types`: the operator types to quantize; by default `ops_to_quantize` chooses from the graph.
    The model is pre-processed first (shape inference, constant folding: what ONNX Runtime recommends)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not calibration:
        raise MeasurementError("int8 quantization needs at least one calibration batch")
    model = onnx.load(str(onnx_path), load_external_data=False)
    name = _input_name(model, onnx_path)
    ops = list(op_types) if op_types is not None else ops_to_quantize(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(onnx_path), str(source), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing only helps; the quantizer runs without it
            log.debug("int8: pre-processing %s skipped (%s)", onnx_path.name, first_line(exc))
            source = onnx_path
        try:
            quantize_static(str(source), str(out_path), _reader(name, calibration), op_types_to_quantize=ops,
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"CalibTensorRangeSymmetric": False})
        except Exception as exc:
            raise MeasurementError(f"int8 quantization of {onnx_path.name} failed ({first_line(exc)[:300]}): "
                                   "use a profile with precision fp32") from exc
    return out_path


def calibration_arrays(dataset, batches: int = CALIBRATION_BATCHES,
                       batch_size: int = CALIBRATION_BATCH_SIZE) -> list[np.ndarray]:
    """The first `batches` batches of `dataset` (items `(input, label)`) as numpy arrays: deterministic,
    so the same model always quantizes to the same file."""
    import torch

    n = min(len(dataset), batches * batch_size)
    inputs = [dataset[i][0] for i in range(n)]
    if not inputs:
        raise MeasurementError("int8 calibration needs training data: the train split is empty")
    stacked = torch.stack([torch.as_tensor(x) for x in inputs]).cpu().numpy()
    return [stacked[i:i + batch_size] for i in range(0, n, batch_size)]
