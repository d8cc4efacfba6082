"""Cross-layer equalization of a model given as ONNX, on its weight initializers.

The same method as `transform/equalize/torch.py` (Nagel et al. 2019, §4.1), on the graph a torch exporter writes (batch
norms already folded into the convolutions): a Conv or Gemm whose output goes, alone, through ReLU / LeakyReLU /
pooling (or directly) into a Conv (group 1) or Gemm. Output channel c of the first layer is divided by s_c and
input channel c of the second multiplied by it; the function is unchanged. `auto` keeps the equalized weights
only when the model's output, with the pairs' weights and the activations between them in INT8, measures better
on the calibration samples (onnxruntime, Q/DQ nodes for the activations). The equalized model is a new file; the
user's is untouched.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.inputs.model import LoadedModel
from edgekit.transform.compress.onnx import OnnxLayer, onnx_layers
from edgekit.transform.equalize.common import (
    MEASURE_SAMPLES,
    Equalized,
    Pair,
    fake_quant_weight,
    not_applied,
    scale_pairs,
)

THROUGH = ("Relu", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "Dropout", "Identity")
WEIGHTED = ("Conv", "Gemm")  # a MatMul's channels may be on any axis (transformers): left alone


def equalize_onnx(model: LoadedModel, mode: str, inputs: dict[str, np.ndarray], workdir: Path) -> Equalized:
    import onnx
    import torch
    from onnx import numpy_helper

    proto = onnx.load(str(model.onnx_path))
    layers = {layer.initializer: layer for layer in onnx_layers(proto)}
    pairs, named = find_pairs(proto, layers)
    if not pairs:
        return Equalized(model, not_applied(mode), "equalize on: no pair of consecutive weighted layers to equalize"
                         if mode == "on" else None)
    initializers = {i.name: i for i in proto.graph.initializer}
    params = {}
    for key, (initializer, layer) in named.items():
        array = numpy_helper.to_array(initializers[initializer])
        params[key] = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, layer.out_axis, 0)
                                                            if key.endswith(".weight") else array).astype(np.float32))
    scaled, totals = scale_pairs(params, pairs)
    samples = {k: v[:MEASURE_SAMPLES] for k, v in inputs.items()}
    clean, channel_ranges = _run(proto, samples, [p.activation for p in pairs])
    ranges_before = {t: (float(low.min()), float(high.max())) for t, (low, high) in channel_ranges.items()}
    ranges_after = {t: (float((low / totals[t].numpy()).min()), float((high / totals[t].numpy()).max()))
                    for t, (low, high) in channel_ranges.items()}
    before, after = (_simulated_sqnr(proto, named, values, pairs, samples, ranges, clean)
                     for values, ranges in ((params, ranges_before), (scaled, ranges_after)))
    applied = bool(mode == "on" or after > before)
    block = {"mode": mode, "applied": applied,
             "pairs": [{"first": p.first, "second": p.second, "norm": None} for p in pairs],
             "sqnr_db": {"before": round(float(before), 2), "after": round(float(after), 2)}}
    verb = "equalized" if applied else "left as they were (equalizing measured worse)"
    note = (f"equalize {mode}: {len(pairs)} layer pair(s) {verb} "
            f"({', '.join(f'{p.first} -> {p.second}' for p in pairs)}); simulated INT8 SQNR of those layers "
            f"{before:.1f} dB -> {after:.1f} dB")
    if not applied:
        return Equalized(model, block, note)
    out = workdir / "equalized.onnx"
    onnx.save(_with_values(proto, named, scaled), str(out))
    return Equalized(dataclasses.replace(model, onnx_path=out), block, note)


def find_pairs(proto: Any, layers: dict[str, OnnxLayer]) -> tuple[list[Pair], dict[str, tuple[str, OnnxLayer]]]:
    """The pairs, and for each parameter key (`<layer>.weight`, `<layer>.bias`) its initializer and layer."""
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}
    initializers = {i.name for i in proto.graph.initializer}
    pairs, named = [], {}
    for node in proto.graph.node:
        first = _weighted(node, layers)
        if first is None:
            continue
        tensor = node.output[0]
        while True:
            users = consumers.get(tensor, [])
            if len(users) != 1 or tensor in outputs:
                break
            user = users[0]
            second = _weighted(user, layers)
            if second is not None and user.input[0] == tensor and _groups(user) == 1:
                bias = node.input[2] if len(node.input) > 2 and node.input[2] in initializers else None
                named[f"{first.name}.weight"] = (first.initializer, first)
                if bias:
                    named[f"{first.name}.bias"] = (bias, OnnxLayer(first.name, bias, node.op_type, 0))
                named[f"{second.name}.weight"] = (second.initializer, second)
                pairs.append(Pair(first.name, second.name, None, tensor, 1))
                break
            if user.op_type not in THROUGH or user.input[0] != tensor:
                break
            tensor = user.output[0]
    return pairs, named


def _weighted(node: Any, layers: dict[str, OnnxLayer]) -> OnnxLayer | None:
    if node.op_type not in WEIGHTED or len(node.input) < 2:
        return None
    return layers.get(node.input[1])


def _groups(node: Any) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def _run(proto: Any, samples: dict[str, np.ndarray], tensors: list[str]) -> tuple[list, dict]:
    """The model's outputs per sample, and each tensor's per-channel (axis 1) minimum and maximum."""
    from edgekit.runners.onnxrt import cpu_session

    probe = _clone(proto)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(_value(name) for name in tensors if name not in known)
    session = cpu_session(probe.SerializeToString(), optimize=False)
    names = [o.name for o in session.get_outputs()]
    count = len(next(iter(samples.values())))
    results = [session.run(names, {k: v[i:i + 1] for k, v in samples.items()}) for i in range(count)]
    model_outputs = [o.name for o in proto.graph.output]
    clean = [[r[names.index(n)] for n in model_outputs] for r in results]
    ranges = {}
    for tensor in tensors:
        values = np.concatenate([r[names.index(tensor)] for r in results])
        channels = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1)
        ranges[tensor] = (channels.min(1), channels.max(1))
    return clean, ranges


def _simulated_sqnr(proto: Any, named: dict, values: dict, pairs: list[Pair], samples: dict[str, np.ndarray],
                    ranges: dict[str, tuple[float, float]], clean: list) -> float:
    """Output SQNR (dB) of the model with `values`, the pairs' weights per-channel INT8 and the activations
    between them per-tensor 8-bit (Q/DQ nodes over `ranges`)."""
    from edgekit.runners.onnxrt import cpu_session

    weights = {k: (fake_quant_weight(v) if k.endswith(".weight") else v) for k, v in values.items()}
    model = _with_qdq(_with_values(proto, named, weights), ranges)
    session = cpu_session(model.SerializeToString(), optimize=False)
    names = [o.name for o in proto.graph.output]
    count = len(next(iter(samples.values())))
    quantized = [session.run(names, {k: v[i:i + 1] for k, v in samples.items()}) for i in range(count)]
    signal = sum(float(np.sum(np.square(c, dtype=np.float64))) for row in clean for c in row)
    noise = sum(float(np.sum(np.square(c.astype(np.float64) - q))) for a, b in zip(clean, quantized)
                for c, q in zip(a, b))
    return float(10 * np.log10(max(signal, 1e-30) / max(noise, 1e-30)))


def _with_values(proto: Any, named: dict, values: dict) -> Any:
    from onnx import numpy_helper

    model = _clone(proto)
    initializers = {i.name: i for i in model.graph.initializer}
    for key, (initializer, layer) in named.items():
        array = values[key].detach().numpy()
        array = np.moveaxis(array, 0, layer.out_axis) if key.endswith(".weight") else array
        dtype = numpy_helper.to_array(initializers[initializer]).dtype
        initializers[initializer].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype),
                                                                   initializer))
    return model


def _with_qdq(proto: Any, ranges: dict[str, tuple[float, float]]) -> Any:
    """A QuantizeLinear / DequantizeLinear pair (uint8, per tensor) on each of `ranges`' tensors."""
    from onnx import helper, numpy_helper

    for tensor, (low, high) in ranges.items():
        low, high = min(low, 0.0), max(high, 0.0)
        step = max(high - low, 1e-12) / 255
        zero = round(-low / step)
        names = [f"{tensor}_eq_scale", f"{tensor}_eq_zero", f"{tensor}_eq_q", f"{tensor}_eq_dq"]
        proto.graph.initializer.extend([numpy_helper.from_array(np.array(step, np.float32), names[0]),
                                        numpy_helper.from_array(np.array(zero, np.uint8), names[1])])
        for node in proto.graph.node:
            node.input[:] = [names[3] if name == tensor else name for name in node.input]
        proto.graph.node.extend([helper.make_node("QuantizeLinear", [tensor, names[0], names[1]], [names[2]]),
                                 helper.make_node("DequantizeLinear", [names[2], names[0], names[1]], [names[3]])])
    return _sorted(proto)


def _sorted(proto: Any) -> Any:
    """Nodes in an order where each runs after what it reads (the Q/DQ pairs were appended at the end)."""
    ready = {i.name for i in proto.graph.input} | {i.name for i in proto.graph.initializer} | {""}
    pending, ordered = list(proto.graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            ordered += rest
            break
        pending = rest
    import onnx

    copies = []
    for node in ordered:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copies.append(copy)
    del proto.graph.node[:]
    proto.graph.node.extend(copies)
    return proto


def _value(name: str) -> Any:
    from onnx import helper

    return helper.make_empty_tensor_value_info(name)


def _clone(proto: Any) -> Any:
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    return model
