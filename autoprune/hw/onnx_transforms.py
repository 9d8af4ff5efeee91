"""Rewrites of an ONNX model that a profile asks for before it is timed: fp16 weights (TensorRT 11's
strongly typed networks take their precision from the model) and 2:4 structured sparsity."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from autoprune.errors import MeasurementError


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with fp16 weights and arithmetic; inputs and outputs stay fp32 (casts are inserted)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    except Exception as exc:
        raise MeasurementError(f"fp16 conversion of the ONNX model failed ({exc}): use precision fp32") from exc
    return topologically_sorted(converted)  # the converter appends its input casts at the end


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its top-level nodes in dependency order (what onnx.checker and parsers expect)."""
    graph = model.graph
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [n for n in pending if all(name in ready for name in n.input)]
        if not runnable:
            raise MeasurementError("the ONNX graph has a cycle or a dangling input: re-export the model")
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if not any(n is r for r in runnable)]
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def prune_2_4(weight: np.ndarray, axis: int) -> np.ndarray:
    """Zero the 2 smallest-magnitude values of every 4 consecutive values along `axis` (NVIDIA's
    2:4 pattern; for convolutions and linear layers `axis` is the input-channel axis)."""
    moved = np.moveaxis(weight, axis, -1)
    c = moved.shape[-1]
    pad = (-c) % 4
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)])
    groups = padded.reshape(*padded.shape[:-1], -1, 4)
    smallest = np.argsort(np.abs(groups), axis=-1, kind="stable")[..., :2]
    mask = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(mask, smallest, False, axis=-1)
    pruned = (groups * mask).reshape(padded.shape)[..., :c]
    return np.moveaxis(pruned, -1, axis).astype(weight.dtype)


def _sparse_axes(model: onnx.ModelProto) -> dict[str, int]:
    """Initializer name -> input-channel axis, for the weights of Conv, Gemm and MatMul nodes."""
    axes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            axes[node.input[1]] = 1                      # [out, in/groups, k...]
        elif node.op_type == "Gemm" and len(node.input) > 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes[node.input[1]] = 1 if trans_b else 0    # B is [out, in] when transposed
        elif node.op_type == "MatMul" and len(node.input) > 1:
            axes[node.input[1]] = 0                      # [in, out]
    return axes


def sparsify_2_4(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose Conv/Gemm/MatMul weights follow the 2:4 pattern (input-channel groups of 4; layers
    with fewer than 4 input channels are left dense), as TensorRT's sparse tactics require."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    axes = _sparse_axes(out)
    for init in out.graph.initializer:
        axis = axes.get(init.name)
        if axis is None:
            continue
        w = numpy_helper.to_array(init)
        if w.ndim < 2 or w.shape[axis] < 4:
            continue
        init.CopyFrom(numpy_helper.from_array(prune_2_4(w, axis), init.name))
    return out
