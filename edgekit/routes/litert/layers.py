"""Per-layer drift of a .tflite: every op output read from a LiteRT interpreter that keeps its tensors,
dequantised, matched to the reference ONNX by value and named by PyTorch module (edgekit/measure/layers.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgekit.measure.drift import sqnr_db
from edgekit.measure.layers import fused_modules, local_sqnr_db, match_to_onnx, onnx_activations, pair_with_float
from edgekit.routes.litert.runner import interpreter_class
from edgekit.runners.binding import Binding


def tflite_activations(path: Path, bindings: list[Binding], inputs: dict[str, np.ndarray]) -> list[dict]:
    """Each op output of a TFLite model: name, op, quantisation, and its values (dequantised) over the samples."""
    interpreter = keeping_interpreter(path)
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] not in ("DELEGATE", "QUANTIZE", "DEQUANTIZE")]
    values = tensor_values(interpreter, bindings, inputs, [int(op["outputs"][0]) for op in ops])
    return [{"name": details[i]["name"], "op": op["op_name"], "scale": float(details[i]["quantization"][0]),
             "zero_point": int(details[i]["quantization"][1]), "dtype": np.dtype(details[i]["dtype"]).name,
             "values": values[i]} for op, i in zip(ops, values)]


def keeping_interpreter(model: Path | bytes):
    """A LiteRT interpreter (from a file or the model's bytes) that keeps every intermediate tensor, allocated."""
    cls, _, _ = interpreter_class()
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    with warnings.catch_warnings():  # LiteRT warns that keeping every tensor is for debugging: that is the point
        warnings.simplefilter("ignore")
        interpreter = cls(**source, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    return interpreter


def tensor_values(interpreter, bindings: list[Binding], inputs: dict[str, np.ndarray],
                  indices: list[int]) -> dict[int, np.ndarray]:
    """The tensors at `indices` of a keeping_interpreter, dequantised, one sample at a time, stacked."""
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    in_index = [interpreter.get_input_details()[b.device_index]["index"] for b in bindings]
    values: dict[int, list[np.ndarray]] = {index: [] for index in indices}
    for i in range(len(next(iter(inputs.values())))):
        for binding, index in zip(bindings, in_index):
            interpreter.set_tensor(index, binding.encode(inputs[binding.model_name][i:i + 1]))
        interpreter.invoke()
        for index in values:
            values[index].append(_dequantize(interpreter.get_tensor(index), details[index]))
    return {index: np.concatenate(found) for index, found in values.items()}


def _dequantize(array: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    return (array.astype(np.float32) - zero_point) * scale if scale else array.astype(np.float32)


def layer_drift(export_path: Path, modules: dict[str, str], float_path: Path, device_path: Path,
                float_inputs: list[Binding], device_inputs: list[Binding],
                samples: dict[str, np.ndarray]) -> list[dict]:
    """The report's `layers`: one row per INT8 activation of the device model, worst `sqnr_db` first."""
    import onnx

    floats = tflite_activations(float_path, float_inputs, samples)
    to_onnx = match_to_onnx(floats, onnx_activations(export_path, samples))
    graph = onnx.load(str(export_path)).graph
    rows, seen = [], set()
    for act, ref in pair_with_float(tflite_activations(device_path, device_inputs, samples), floats):
        tensor = to_onnx.get(ref["name"])
        if tensor is None or tensor in seen or act["dtype"] not in ("int8", "int16"):
            continue
        seen.add(tensor)
        group = fused_modules(graph, tensor, set(to_onnx.values()) - {tensor}, modules)
        rows.append({"module": group[0] if group else modules.get(tensor), "modules": group, "tensor": tensor,
                     "device_tensor": act["name"], "float_tensor": ref["name"], "op": act["op"],
                     "scale": act["scale"], "zero_point": act["zero_point"], "dtype": act["dtype"],
                     "precision": "int16x8" if act["dtype"] == "int16" else "int8",
                     "sqnr_db": round(local_sqnr_db(ref["values"], act["scale"], act["zero_point"], act["dtype"]), 3),
                     "accumulated_sqnr_db": round(sqnr_db(ref["values"], act["values"]), 3)})
    return sorted(rows, key=lambda r: r["sqnr_db"])
