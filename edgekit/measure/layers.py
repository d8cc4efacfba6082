"""Per-layer drift: every INT8 activation of the device model, compared with its float counterpart and named
by the PyTorch module it came from. The format-free parts and the Q/DQ ONNX probe live here; each route that reads
its own format adds its probe in its package (routes/litert/layers.py, routes/openvino/layers.py).

Tensors are matched by value, not by name: the float32 TFLite's activations equal the reference ONNX's (up to
the NHWC layout), so each TFLite tensor finds its ONNX tensor, and the ONNX tensor its module (recorded at
export). For each INT8 tensor two numbers: `sqnr_db`, the error its own INT8 range introduces (the float
activation quantised with the device tensor's scale, averaged over channels, so one huge channel cannot hide
the others), and `accumulated_sqnr_db`, the device activation against the float one (all error up to there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.measure.drift import SQNR_CAP_DB, sqnr_db
from edgekit.measure.mapping import layout_candidates, relative_error

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
    quantized = [(n, _model_tensor(n.input[0], floats)) for n in qdq.node if n.op_type == "QuantizeLinear"]
    quantized = [(n, tensor) for n, tensor in quantized if tensor is not None]
    stops = {tensor for _, tensor in quantized}
    graph, rows = onnx.load(str(export_path)).graph, []
    for node, tensor in quantized:
        scale = float(constants[node.input[1]])
        zero = constants.get(node.input[2]) if len(node.input) > 2 else None
        dtype = str(zero.dtype) if zero is not None else "uint8"  # ONNX's default zero point is uint8 0
        zero_point = int(zero) if zero is not None else 0
        dq_out = device.get(dequantized.get(node.output[0], ""))
        group = fused_modules(graph, tensor, stops - {tensor}, modules)
        rows.append({"module": group[0] if group else modules.get(tensor), "modules": group, "tensor": tensor,
                     "device_tensor": node.output[0], "op": "QuantizeLinear", "scale": scale,
                     "zero_point": zero_point, "dtype": dtype,
                     "sqnr_db": round(local_sqnr_db(floats[tensor], scale, zero_point, dtype, axis=1), 3),
                     "accumulated_sqnr_db": None if dq_out is None else round(sqnr_db(floats[tensor], dq_out), 3)})
    return sorted(rows, key=lambda r: r["sqnr_db"])


GRAPH_OUTPUT_SUFFIX = "_QuantizeLinear_Input"  # onnxruntime's QDQ renames a graph output's producer output so


def _model_tensor(name: str, floats: dict) -> str | None:
    """The export's tensor a QuantizeLinear reads: its own name, or the graph output onnxruntime renamed to
    `<output>_QuantizeLinear_Input` (the model's last op, often a concat that joins parts)."""
    if name in floats:
        return name
    if name.endswith(GRAPH_OUTPUT_SUFFIX) and name[:-len(GRAPH_OUTPUT_SUFFIX)] in floats:
        return name[:-len(GRAPH_OUTPUT_SUFFIX)]
    return None


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
