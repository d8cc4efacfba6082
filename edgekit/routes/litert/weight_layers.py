"""Per-layer drift of weight-quantized TFLite models (dynamic-range INT8, weight-only INT4): the activations stay
float, so a layer's own error is its weights' error.

One row per weighted op (fully connected, convolutions) of the device model: `sqnr_db` is the SQNR of its
dequantized weights against the float32 model's, `accumulated_sqnr_db` its output against the float32 model's
output (all error up to there), `precision` what its weights ship in (the target's, or float32 for an op the
quantizer left in float). Named by PyTorch module as in `layers.layer_drift`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgekit.measure.drift import sqnr_db
from edgekit.measure.layers import fused_modules, match_to_onnx, onnx_activations, pair_with_float
from edgekit.routes.litert.layers import tflite_activations
from edgekit.runners.binding import Binding

WEIGHTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "BATCH_MATMUL",
                "EMBEDDING_LOOKUP")


def weight_layer_drift(export_path: Path, modules: dict[str, str], float_path: Path, device_path: Path,
                       float_inputs: list[Binding], device_inputs: list[Binding], samples: dict[str, np.ndarray],
                       precision: str) -> list[dict]:
    """The report's `layers` for a weight-quantized model: one row per weighted op, worst weight SQNR first."""
    import onnx

    floats = tflite_activations(float_path, float_inputs, samples)
    to_onnx = match_to_onnx(floats, onnx_activations(export_path, samples))
    float_weights, device_weights = _weights(float_path), _weights(device_path)
    graph, rows, seen = onnx.load(str(export_path)).graph, [], set()
    for act, ref in pair_with_float(tflite_activations(device_path, device_inputs, samples), floats):
        tensor = to_onnx.get(ref["name"])
        if act["op"] not in WEIGHTED_OPS or tensor is None or tensor in seen or act["name"] not in device_weights:
            continue
        seen.add(tensor)
        (weights, dtype), (reference, _) = device_weights[act["name"]], float_weights.get(ref["name"], (None, None))
        quantized = dtype != "float32"
        group = fused_modules(graph, tensor, set(to_onnx.values()) - {tensor}, modules)
        rows.append({"module": group[0] if group else modules.get(tensor), "modules": group, "tensor": tensor,
                     "device_tensor": act["name"], "float_tensor": ref["name"], "op": act["op"], "scale": None,
                     "sqnr_db": round(sqnr_db(reference, weights), 3) if reference is not None else None,
                     "accumulated_sqnr_db": round(sqnr_db(ref["values"], act["values"]), 3),
                     "precision": precision if quantized else "float32",
                     "chosen_because": f"{precision} weights by default" if quantized else
                     f"the quantizer has no {precision} weights for {act['op']}: kept in float"})
    return sorted(rows, key=lambda r: (r["sqnr_db"] is None, r["sqnr_db"] or 0.0))


def _weights(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """Output tensor name of each weighted op -> (its weights as float, the dtype they are stored in); weights
    behind a DEQUANTIZE (weight-only) are read from the DEQUANTIZE's input."""
    from edgekit.routes.litert.runner import interpreter_class

    cls, _, _ = interpreter_class()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = cls(model_path=str(path))
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # no public API lists the graph's ops
    dequantized = {int(op["outputs"][0]): int(op["inputs"][0]) for op in ops if op["op_name"] == "DEQUANTIZE"}
    produced = {int(i) for op in ops for i in op["outputs"]} | {d["index"] for d in interpreter.get_input_details()}
    found = {}
    for op in ops:
        if op["op_name"] not in WEIGHTED_OPS or len(op["inputs"]) < 2:
            continue
        index = dequantized.get(int(op["inputs"][1]), int(op["inputs"][1]))
        if index not in produced:  # a constant: BATCH_MATMUL of two activations has no weights
            found[details[int(op["outputs"][0])]["name"]] = _dequantized(interpreter.get_tensor(index), details[index])
    return found


def _dequantized(values: np.ndarray, detail: dict) -> tuple[np.ndarray, str]:
    params = detail["quantization_parameters"]
    scales, zero_points = params["scales"], params["zero_points"]
    if not np.issubdtype(values.dtype, np.integer) or scales.size == 0:
        return values.astype(np.float32), np.dtype(values.dtype).name
    shape = [1] * values.ndim
    if scales.size > 1:
        shape[params["quantized_dimension"]] = -1
    real = (values.astype(np.float32) - zero_points.reshape(shape)) * scales.reshape(shape)
    return real, np.dtype(values.dtype).name
