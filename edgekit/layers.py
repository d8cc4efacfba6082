"""Per-layer drift: every INT8 activation of the device model, compared with its float counterpart and named
by the PyTorch module it came from.

Tensors are matched by value, not by name: the float32 TFLite's activations equal the reference ONNX's (up to
the NHWC layout), so each TFLite tensor finds its ONNX tensor, and the ONNX tensor its module (recorded at
export). For each INT8 tensor two numbers: `sqnr_db`, the error its own INT8 range introduces (the float
activation quantised with the device tensor's scale, averaged over channels, so one huge channel cannot hide
the others), and `accumulated_sqnr_db`, the device activation against the float one (all error up to there).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgekit.drift import SQNR_CAP_DB, sqnr_db
from edgekit.mapping import layout_candidates, relative_error
from edgekit.runners.litert import Binding

MATCH_ERROR = 1e-3
LAYER_BUDGET_BYTES = 512 * 2**20  # every activation of the float and the device model, kept over the samples
MIN_LAYER_SAMPLES = 2  # ResNet-50: 422 MB a sample for the float and device activations together
FOLDED_ACTIVATIONS = ("Relu", "Clip")  # quantizers fold these into the op before them


def activation_bytes(path: Path) -> int:
    """Bytes of every intermediate tensor of one batch-1 sample of an ONNX model (shapes inferred)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    total = 0
    for value in model.graph.value_info:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            total += int(np.prod(dims)) * 4
    return total


def layer_samples(path: Path, wanted: int, minimum: int = MIN_LAYER_SAMPLES) -> int:
    """How many samples per-layer drift runs: `wanted`, fewer when keeping every activation of the float and the
    device model for them would pass LAYER_BUDGET_BYTES (mobilenet_v2 at 224x224: 104 MB a sample), at least
    MIN_LAYER_SAMPLES."""
    per_sample = 2 * max(activation_bytes(path), 1)
    return max(min(wanted, minimum), min(wanted, LAYER_BUDGET_BYTES // per_sample))


def onnx_activations(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every intermediate tensor of an ONNX model (graph optimisations off), stacked over the samples."""
    import onnx

    from edgekit.runners.onnxrt import cpu_session

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    known = {o.name for o in model.graph.output}
    produced = {name for node in model.graph.node for name in node.output}  # value_info may name removed tensors
    model.graph.output.extend(v for v in model.graph.value_info if v.name not in known and v.name in produced)
    session = cpu_session(model.SerializeToString(), optimize=False)
    names = [o.name for o in session.get_outputs()]
    rows = [session.run(names, {k: v[i:i + 1] for k, v in inputs.items()}) for i in range(len(next(iter(
        inputs.values()))))]
    return {n: np.concatenate([r[j] for r in rows]) for j, n in enumerate(names) if np.ndim(rows[0][j]) > 0}


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
    from edgekit.runners.litert import interpreter_class

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


def match_to_onnx(activations: list[dict], onnx_values: dict[str, np.ndarray]) -> dict[str, str]:
    """TFLite tensor name -> ONNX tensor name whose values are the same (any layout the converter used)."""
    matched = {}
    for act in activations:
        best = min(((relative_error(ref, _to_layout(act["values"], ref)), name) for name, ref in onnx_values.items()
                    if _to_layout(act["values"], ref) is not None), default=None)
        if best is not None and best[0] <= MATCH_ERROR:
            matched[act["name"]] = best[1]
    return matched


def _to_layout(values: np.ndarray, reference: np.ndarray) -> np.ndarray | None:
    """`values` in the reference's layout, or None. Tensors whose first axis is not the sample axis (a (3, 1, ...)
    stack of q, k, v) stack differently over samples: only the same total size can match."""
    if values.size != reference.size:
        return None
    for perm in layout_candidates((1, *reference.shape[1:]), (1, *values.shape[1:])):
        converted = values.transpose(np.argsort(perm)) if perm else values
        return converted if converted.shape == reference.shape else None
    return None


def local_sqnr_db(values: np.ndarray, scale: float, zero_point: int, dtype: str, axis: int = -1) -> float:
    """SQNR of the float activation quantised with this scale, per channel (`axis`), averaged in dB."""
    info = np.iinfo(dtype)
    fake = (np.clip(np.round(values / scale) + zero_point, info.min, info.max) - zero_point) * scale
    values, fake = np.moveaxis(values, axis, -1), np.moveaxis(fake, axis, -1)
    flat, noisy = values.reshape(-1, values.shape[-1]), fake.reshape(-1, values.shape[-1])
    per_channel = [sqnr_db(flat[:, c], noisy[:, c]) for c in range(flat.shape[1]) if np.any(flat[:, c])]
    return float(np.mean(per_channel)) if per_channel else SQNR_CAP_DB


def pair_with_float(device: list[dict], floats: list[dict]) -> list[tuple[dict, dict]]:
    """Device activations with their float counterparts: same tensor name, else the next unused same op+shape."""
    by_name = {a["name"]: a for a in floats}
    used: set[str] = set()
    pairs = []
    for act in device:
        ref = by_name.get(act["name"])
        if ref is None or ref["name"] in used:
            ref = next((f for f in floats if f["name"] not in used and f["op"] == act["op"]
                        and f["values"].shape == act["values"].shape), None)
        if ref is not None:
            used.add(ref["name"])
            pairs.append((act, ref))
    return pairs


def fused_modules(graph, tensor: str, stops: set[str], modules: dict[str, str]) -> list[str]:
    """Modules of the ONNX nodes a device op fused into `tensor`: walk back to the previous matched tensor."""
    producers = {out: node for node in graph.node for out in node.output}
    found, todo, seen = [], [tensor], set()
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        found.append(node)
        todo.extend(i for i in node.input if i not in stops and i in producers)
    names = [modules.get(node.output[0]) for node in reversed(found)]
    return list(dict.fromkeys(n for n in names if n))


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


def qdq_layer_drift(export_path: Path, qdq_path: Path, modules: dict[str, str],
                    samples: dict[str, np.ndarray]) -> list[dict]:
    """`layers` for a Q/DQ ONNX: every quantised activation (QuantizeLinear on a graph tensor), local and
    accumulated SQNR against the float reference, named by the module that produced the tensor."""
    import onnx
    from onnx import numpy_helper

    qdq = onnx.load(str(qdq_path)).graph
    constants = {i.name: numpy_helper.to_array(i) for i in qdq.initializer}
    dequantized = {n.input[0]: n.output[0] for n in qdq.node if n.op_type == "DequantizeLinear"}
    floats, device = onnx_activations(export_path, samples), onnx_activations(qdq_path, samples)
    quantized = [n for n in qdq.node if n.op_type == "QuantizeLinear" and n.input[0] in floats]
    stops = {n.input[0] for n in quantized}
    graph, rows = onnx.load(str(export_path)).graph, []
    for node in quantized:
        tensor, scale = node.input[0], float(constants[node.input[1]])
        dq_out = device.get(dequantized.get(node.output[0], ""))
        group = fused_modules(graph, tensor, stops - {tensor}, modules)
        rows.append({"module": group[0] if group else modules.get(tensor), "modules": group, "tensor": tensor,
                     "device_tensor": node.output[0], "op": "QuantizeLinear", "scale": scale, "zero_point": 0,
                     "dtype": "int8",
                     "sqnr_db": round(local_sqnr_db(floats[tensor], scale, 0, "int8", axis=1), 3),
                     "accumulated_sqnr_db": None if dq_out is None else round(sqnr_db(floats[tensor], dq_out), 3)})
    return sorted(rows, key=lambda r: r["sqnr_db"])


def touching(model: Path, tensors: frozenset[str]) -> list:
    """The nodes that write or read any of `tensors`, and the node before an activation that writes one (the
    quantizer folds a Relu into the op before it, whose output then carries the range): left out of quantization,
    the tensors stay float."""
    import onnx

    if not tensors:
        return []
    nodes = onnx.load(str(model), load_external_data=False).graph.node
    writer = {name: node for node in nodes for name in node.output}
    wanted = set(tensors)
    for name in tensors:
        node = writer.get(name)
        if node is not None and node.op_type in FOLDED_ACTIVATIONS:
            wanted.update(node.input[:1])
    return [n for n in nodes if (set(n.input) | set(n.output)) & wanted]


def openvino_layer_drift(export_path: Path, xml_path: Path, modules: dict[str, str],
                         samples: dict[str, np.ndarray]) -> list[dict]:
    """`layers` for an NNCF-quantized OpenVINO IR: every FakeQuantize on an activation (its input keeps the ONNX
    tensor name), local SQNR from its range and accumulated SQNR of its output in the OpenVINO runtime."""
    import onnx
    import openvino as ov

    from edgekit.runners.openvino import F32

    core = ov.Core()
    model = core.read_model(str(xml_path))
    floats = onnx_activations(export_path, samples)
    found = []
    for op in model.get_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        source = op.input(0).get_source_output()
        tensor = next((name for name in sorted(source.get_names()) if name in floats), None)
        bounds = [op.input(i).get_source_output().get_node() for i in (1, 2)]
        if tensor is None or any(b.get_type_name() != "Constant" or b.get_data().size != 1 for b in bounds):
            continue  # a weight, or per-channel activation ranges
        low, high = (float(b.get_data().reshape(())) for b in bounds)
        found.append((op, tensor, low, high, int(op.get_attributes()["levels"])))
    if not found:
        return []
    model.add_outputs([op.output(0) for op, *_ in found])
    compiled = core.compile_model(model, "CPU", F32)
    ports = list(compiled.outputs)[-len(found):]
    request = compiled.create_infer_request()
    values: list[list[np.ndarray]] = [[] for _ in found]
    for i in range(len(next(iter(samples.values())))):
        result = request.infer({k: v[i:i + 1] for k, v in samples.items()})
        for j, port in enumerate(ports):
            values[j].append(np.array(result[port], copy=True))
    graph, stops, rows = onnx.load(str(export_path)).graph, {f[1] for f in found}, []
    for (op, tensor, low, high, levels), device in zip(found, values):
        scale = (high - low) / (levels - 1)
        group = fused_modules(graph, tensor, stops - {tensor}, modules)
        rows.append({"module": group[0] if group else modules.get(tensor), "modules": group, "tensor": tensor,
                     "device_tensor": op.get_friendly_name(), "op": "FakeQuantize", "scale": scale,
                     "zero_point": round(-low / scale), "dtype": "uint8",
                     "sqnr_db": round(local_sqnr_db(floats[tensor], scale, round(-low / scale), "uint8", axis=1), 3),
                     "accumulated_sqnr_db": round(sqnr_db(floats[tensor], np.concatenate(device)), 3)})
    return sorted(rows, key=lambda r: r["sqnr_db"])
