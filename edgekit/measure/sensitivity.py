"""Per-layer sensitivity: how much the model's output suffers when one activation alone is quantized.

A group of activations that share one grid (edgekit/measure/groups.py) is quantized together and ranked as one.
A layer's own (local) SQNR says how coarse its INT8 grid is, not how much that costs at the output: a coarse early
activation can wash out, a fine one in front of an amplifying head (a DFL box branch times its stride) can ruin
it. The ladder of `--fallback auto` therefore orders layers by measurement: the float export runs in onnxruntime
once per quantized activation, with only that activation fake-quantized (QuantizeLinear/DequantizeLinear with the
device tensor's own scale and zero point), and the worst output SQNR against the float outputs is the layer's
sensitivity (lower: more sensitive). The float model stands in for the rest of the device model, so layers are
compared on their own error, not on the error that reaches them. An output that joins parts of very different range
(a detector's boxes beside its scores) counts by its worst part (edgekit/measure/parts.py).
"""

from __future__ import annotations

import numpy as np

from edgekit.measure.drift import SQNR_CAP_DB, sqnr_db
from edgekit.measure.parts import split_by_range, take

SAMPLES = 8
INTEGER = {"int8": 3, "uint8": 2}  # ONNX TensorProto element types of the zero point


def layer_sensitivity(export_path, groups: list[list[dict]], samples: dict[str, np.ndarray]) -> dict[str, float]:
    """{first ONNX tensor of a group: worst output SQNR (dB) with only that group quantized} for the groups
    (edgekit/measure/groups.py: the rows one INT8 grid covers together; a list of single rows ranks rows) whose
    rows have a per-tensor INT8 grid."""
    import onnx

    from edgekit.runners.onnxrt import cpu_session

    model = onnx.load(str(export_path))
    inputs = {k: v[:SAMPLES] for k, v in samples.items()}
    reference = _run(cpu_session(model.SerializeToString()), inputs)
    parts = {name: split_by_range(value) for name, value in reference.items()}
    found = {}
    for group in groups:
        quantized = _fake_quantized(model, [row for row in group if _gridded(row)])
        if quantized is None:
            continue
        outputs = _run(cpu_session(quantized.SerializeToString()), inputs)
        found[group[0]["tensor"]] = round(min((_worst(reference[k], outputs[k], parts[k]) for k in reference),
                                              default=SQNR_CAP_DB), 3)
    return found


def _gridded(row: dict) -> bool:
    return row.get("dtype", "int8") in INTEGER and bool(row.get("scale")) and "zero_point" in row


def _worst(reference: np.ndarray, output: np.ndarray, parts: list | None) -> float:
    return min([sqnr_db(reference, output), *(sqnr_db(take(reference, p), take(output, p)) for p in parts or [])])


def _run(session, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    count = len(next(iter(inputs.values())))
    rows = [session.run(names, {k: v[i:i + 1] for k, v in inputs.items()}) for i in range(count)]
    return {name: np.concatenate([r[j] for r in rows]) for j, name in enumerate(names)}


def _fake_quantized(model, rows: list[dict]):
    """A copy of `model` whose readers of each row's tensor read it quantized and dequantized with the row's grid;
    None if nothing reads any of them."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    touched = [_insert_qdq(copy.graph, row["tensor"], float(row["scale"]), int(row["zero_point"]),
                           row.get("dtype", "int8"), i) for i, row in enumerate(rows)]
    return copy if any(touched) else None


def _insert_qdq(graph, tensor: str, scale: float, zero_point: int, dtype: str, number: int) -> bool:
    import onnx
    from onnx import helper

    readers = [n for n in graph.node if tensor in n.input]
    if not readers:
        return False
    prefix = f"edgekit_sensitivity_{number}"
    graph.initializer.extend([helper.make_tensor(f"{prefix}_scale", onnx.TensorProto.FLOAT, [], [scale]),
                              helper.make_tensor(f"{prefix}_zero", INTEGER[dtype], [], [zero_point])])
    nodes = [helper.make_node("QuantizeLinear", [tensor, f"{prefix}_scale", f"{prefix}_zero"], [f"{prefix}_q"]),
             helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_scale", f"{prefix}_zero"],
                              [f"{prefix}_dq"])]
    for node in readers:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = f"{prefix}_dq"
    producer = next((i for i, n in enumerate(graph.node) if tensor in n.output), -1)
    for offset, node in enumerate(nodes):
        graph.node.insert(producer + 1 + offset, node)
    return True
