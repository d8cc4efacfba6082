"""Per-layer drift of an NNCF-quantized OpenVINO IR: every FakeQuantize on an activation, named by PyTorch module
(edgekit/measure/layers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.measure.drift import sqnr_db
from edgekit.measure.layers import fused_modules, local_sqnr_db, onnx_activations
from edgekit.routes.openvino.runner import F32


def openvino_layer_drift(export_path: Path, xml_path: Path, modules: dict[str, str],
                         samples: dict[str, np.ndarray]) -> list[dict]:
    """`layers` for an NNCF-quantized OpenVINO IR: every FakeQuantize on an activation (its input keeps the ONNX
    tensor name), local SQNR from its range and accumulated SQNR of its output in the OpenVINO runtime."""
    import onnx
    import openvino as ov

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
