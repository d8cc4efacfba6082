"""MaxPool with padding unlike TensorFlow's SAME -> an explicit edge Pad, then MaxPool without padding.

onnx2tf lowers MaxPool pads that TensorFlow's SAME padding cannot express to an explicit PAD before MAX_POOL_2D.
It pads with the dtype's minimum, except when INT8 output is requested: then with 0 (its workaround for INT8
ranges, onnx2tf issue #444), and the float32 model of the same run pads with 0 too. A border window whose inputs
are all negative then returns 0 instead of their maximum (measured: max relative error 0.2-0.3 on standard-normal
inputs, for k3-s2-p1). Padding with the edge value is exact in float and in INT8: with dilation 1 and pads smaller
than the kernel, every window that reaches into the padding also holds the edge element it copies. Pads equal to
SAME's are left alone (onnx2tf uses SAME pooling, which is right), and so are tensors whose channel count equals a
spatial size (onnx2tf pads the wrong axes there either way, measured).
"""

from __future__ import annotations

import numpy as np

from edgekit.routes.litert.repairs import graph

NAME = "maxpool-pads-as-edge-pad"
PROBLEM = ("onnx2tf pads MaxPool (pads unlike SAME's) with zeros, not -inf, when INT8 output is requested, in the "
           "float32 model too: border windows of negative inputs return 0")


def targets(model) -> list:
    known = graph.shapes(model)
    return [node for node in model.graph.node if node.op_type == "MaxPool" and _fits(node)
            and node.input[0] in known and not graph.ambiguous_layout(known[node.input[0]])
            and list(graph.attribute(node, "pads")) != same_pads(known[node.input[0]][2:], node)]


def same_pads(sizes: tuple[int, ...], node) -> list[int]:
    """TensorFlow's SAME padding for these spatial sizes, in ONNX order (all begins, then all ends)."""
    kernel = graph.attribute(node, "kernel_shape")
    strides = graph.attribute(node, "strides") or [1] * len(kernel)
    totals = [max((-(-size // stride) - 1) * stride + k - size, 0) for size, k, stride in zip(sizes, kernel, strides)]
    return [t // 2 for t in totals] + [t - t // 2 for t in totals]


def _fits(node) -> bool:
    pads = graph.attribute(node, "pads") or []
    kernel = graph.attribute(node, "kernel_shape") or []
    dilations = graph.attribute(node, "dilations") or [1] * len(kernel)
    rank = len(kernel)
    return (any(pads) and len(node.output) == 1 and graph.attribute(node, "auto_pad", "NOTSET") == "NOTSET"
            and all(d == 1 for d in dilations) and min(pads) >= 0
            and all(pads[i] < kernel[i] and pads[i + rank] < kernel[i] for i in range(rank)))


def matches(model) -> bool:
    return bool(targets(model))


def apply(model):
    model = graph.copy_model(model)
    for node in targets(model):
        pads = list(graph.attribute(node, "pads"))
        rank = len(pads) // 2
        full = [0, 0, *pads[:rank], 0, 0, *pads[rank:]]  # ONNX Pad: all begins, then all ends (N and C unpadded)
        padded = f"{node.name}_edge_padded"
        edge_pads = graph.add_constant(model, f"{node.name}_edge_pads", np.int64(full))
        pad = graph.make_node("Pad", [node.input[0], edge_pads],
                              [padded], f"{node.name}_edge_pad", mode="edge")
        pool = graph.make_node("MaxPool", [padded], list(node.output), node.name,
                               **graph.node_attributes(node, skip=("pads",)))
        graph.replace_node(model, node, [pad, pool])
    return model

