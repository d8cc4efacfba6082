"""The weights of a .tflite as the device holds them: constant tensors of rank >= 2, zero points removed (compression
preservation is checked in them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.routes.litert.runner import open_interpreter


def device_weights(path: Path) -> list[tuple[str, np.ndarray]]:
    """Constant tensors of rank >= 2 read by an op of the .tflite (its weights), zero points removed so that an
    exact 0 in the array is an exact 0 in the real-valued weight."""
    interpreter = open_interpreter(path)
    return [(d["name"], _centred(interpreter.get_tensor(d["index"]), d)) for d in weight_details(interpreter)]


def weight_details(interpreter) -> list[dict]:
    """The tensor details of the weights: constant tensors of rank >= 2, read by an op and written by none."""
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]  # no public op list
    produced = {int(i) for op in ops for i in op["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    constants = {int(i) for op in ops for i in op["inputs"] if i >= 0} - produced - graph_inputs
    return [d for d in interpreter.get_tensor_details() if d["index"] in constants and len(d["shape"]) >= 2]


def _centred(array: np.ndarray, detail: dict) -> np.ndarray:
    zero_points = np.asarray(detail.get("quantization_parameters", {}).get("zero_points", []))
    if not zero_points.size or not zero_points.any():
        return array
    axis = detail["quantization_parameters"]["quantized_dimension"] if zero_points.size > 1 else None
    shape = [1] * array.ndim
    if axis is not None:
        shape[axis] = -1
    return array.astype(np.int32) - zero_points.reshape(shape)
