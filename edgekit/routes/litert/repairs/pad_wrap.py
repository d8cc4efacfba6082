"""Pad with mode "wrap" (PyTorch's circular padding) -> Concat of slices, one axis at a time.

onnx2tf cannot convert Pad(mode="wrap"): the conversion stops with "Exception encountered when calling layer
tf.pad". Circular padding is the end of the axis before it and its start after it: Concat(x[-b:], x, x[:e]).
"""

from __future__ import annotations

import numpy as np

from edgekit.routes.litert.repairs import graph

NAME = "wrap-pad-as-concat"
PROBLEM = "onnx2tf cannot convert Pad with mode wrap (circular padding): the conversion fails"


def targets(model) -> list:
    known, values = graph.shapes(model), graph.constants(model)
    return [n for n in model.graph.node if n.op_type == "Pad" and _pads(n, known, values) is not None]


def matches(model) -> bool:
    return bool(targets(model))


def _pads(node, known: dict, values: dict) -> list[tuple[int, int, int]] | None:
    """[(axis, before, after)] of a constant wrap Pad that only grows its input; else None."""
    shape = known.get(node.input[0])
    if (graph.attribute(node, "mode") != "wrap" or shape is None or node.input[1] not in values
            or graph.ambiguous_layout(shape)):
        return None
    pads = [int(p) for p in values[node.input[1]]]
    axes_name = node.input[3] if len(node.input) > 3 else ""
    if axes_name and axes_name not in values:
        return None
    axes = [int(a) % len(shape) for a in values[axes_name]] if axes_name else list(range(len(shape)))
    found = [(axis, pads[i], pads[i + len(axes)]) for i, axis in enumerate(axes)]
    if any(b < 0 or e < 0 or b > shape[axis] or e > shape[axis] for axis, b, e in found):
        return None
    return [cut for cut in found if cut[1] or cut[2]]


def apply(model):
    model = graph.copy_model(model)
    known, values = graph.shapes(model), graph.constants(model)
    for node in targets(model):
        current, nodes = node.input[0], []
        cuts = _pads(node, known, values)
        for index, (axis, before, after) in enumerate(cuts):
            name = f"{node.name}_axis{axis}"
            parts = [_slice(model, nodes, current, axis, -before, None, f"{name}_tail")] if before else []
            parts.append(current)
            if after:
                parts.append(_slice(model, nodes, current, axis, 0, after, f"{name}_head"))
            output = node.output[0] if index == len(cuts) - 1 else name
            nodes.append(graph.make_node("Concat", parts, [output], node.name if output == node.output[0] else name,
                                         axis=axis))
            current = output
        if not cuts:  # all-zero pads: the node is an identity
            nodes.append(graph.make_node("Identity", [current], [node.output[0]], node.name))
        graph.replace_node(model, node, nodes)
    return model


def _slice(model, nodes: list, source: str, axis: int, start: int, end: int | None, name: str) -> str:
    end = np.iinfo(np.int64).max if end is None else end
    inputs = [source] + [graph.add_constant(model, f"{name}_{what}", np.int64([value]))
                         for what, value in (("start", start), ("end", end), ("axis", axis))]
    nodes.append(graph.make_node("Slice", inputs, [name], name))
    return name
