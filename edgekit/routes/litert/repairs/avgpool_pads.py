"""Padded AveragePool -> a depthwise Conv with constant 1/window weights and, for count_include_pad=0, one Mul.

onnx2tf lowers a padded AveragePool to a pool followed by border rows and columns sliced off, rescaled and
concatenated back. In INT8 the concatenation forces one scale on all of them, and the rescaled borders clip:
INT8 SQNR 13 dB against PyTorch for count_include_pad=0, 10.5 dB for a 3x3 stride-1 pool (measured on standard
normal inputs). A depthwise Conv whose weights are all 1/window, with the same pads, is the same average over
zero padding (an explicit Pad would not do: onnx2tf's simplifier folds it back into the pool); multiplying by
window / real elements (a constant map) then excludes the padding. Conv pads with zeros, which onnx2tf gets right.
"""

from __future__ import annotations

import numpy as np

from edgekit.routes.litert.repairs import graph

NAME = "avgpool-pads-as-depthwise-conv"
PROBLEM = ("onnx2tf rescales the border windows of a padded AveragePool into one shared INT8 scale, where they "
           "clip (INT8 SQNR 10-13 dB)")


def targets(model) -> list:
    known = graph.shapes(model)
    return [n for n in model.graph.node if n.op_type == "AveragePool" and n.input[0] in known and _fits(n)
            and not graph.ambiguous_layout(known[n.input[0]], known.get(n.output[0], ()))]


def _fits(node) -> bool:
    pads, kernel = graph.attribute(node, "pads") or [], graph.attribute(node, "kernel_shape") or []
    rank = len(kernel)
    return (any(pads) and min(pads) >= 0 and graph.attribute(node, "ceil_mode", 0) == 0
            and graph.attribute(node, "auto_pad", "NOTSET") == "NOTSET"
            and all(d == 1 for d in graph.attribute(node, "dilations") or [1] * rank)
            and all(pads[i] < kernel[i] and pads[i + rank] < kernel[i] for i in range(rank)))


def matches(model) -> bool:
    return bool(targets(model))


def window_counts(size: int, kernel: int, stride: int, before: int, after: int) -> np.ndarray:
    """How many real (unpadded) elements each output window of one axis covers."""
    starts = np.arange(0, size + before + after - kernel + 1, stride) - before
    return np.minimum(starts + kernel, size) - np.maximum(starts, 0)


def correction(shape: tuple[int, ...], node) -> np.ndarray:
    """kernel size / real elements per window, shaped (1, 1, *spatial) to broadcast over N and C."""
    kernel, pads = graph.attribute(node, "kernel_shape"), graph.attribute(node, "pads")
    strides, rank = graph.attribute(node, "strides") or [1] * len(kernel), len(kernel)
    counts = np.ones((1,), np.float64)
    for i in range(rank):
        axis = window_counts(shape[2 + i], kernel[i], strides[i], pads[i], pads[i + rank])
        counts = np.multiply.outer(counts, axis)
    return (np.prod(kernel) / counts).astype(np.float32).reshape(1, 1, *counts.shape[1:])


def apply(model):
    model = graph.copy_model(model)
    known = graph.shapes(model)
    for node in targets(model):
        shape, kernel = known[node.input[0]], list(graph.attribute(node, "kernel_shape"))
        weights = np.full((shape[1], 1, *kernel), 1.0 / np.prod(kernel), np.float32)
        exclude = graph.attribute(node, "count_include_pad", 0) == 0
        summed = f"{node.name}_window_mean" if exclude else node.output[0]
        window = graph.add_constant(model, f"{node.name}_window_weights", weights)
        conv = graph.make_node("Conv", [node.input[0], window],
                               [summed], f"{node.name}_depthwise" if exclude else node.name, group=shape[1],
                               kernel_shape=kernel, pads=list(graph.attribute(node, "pads")),
                               strides=list(graph.attribute(node, "strides") or [1] * len(kernel)))
        nodes = [conv]
        if exclude:
            scale = graph.add_constant(model, f"{node.name}_window_scale", correction(shape, node))
            nodes.append(graph.make_node("Mul", [summed, scale], [node.output[0]], node.name))
        graph.replace_node(model, node, nodes)
    return model
