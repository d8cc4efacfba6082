"""Resize whose coordinate mapping onnx2tf loses -> MatMuls with constant interpolation matrices.

onnx2tf 1.29 reads Resize's `coordinate_transformation_mode` only for opset <= 17; at opset 18 (edgekit's export)
every resize becomes TensorFlow's half-pixel resize. Bilinear with align_corners=True (max relative error 0.3) and
nearest with a non-integer scale (1.5) come out wrong. A resize is separable: Y = A_h · X · A_wᵀ, with one
row of (at most two) interpolation weights per output position, so a MatMul per axis computes it exactly (nearest
copies values; linear rounds like any float sum). Only resizes whose mapping differs from half-pixel are rewritten,
and not where a channel count equals a spatial size (onnx2tf's layout guess fails there either way).
"""

from __future__ import annotations

import numpy as np

from edgekit.routes.litert.repairs import graph

NAME = "resize-as-matmul"
PROBLEM = ("onnx2tf ignores Resize's coordinate_transformation_mode at opset >= 18 (half-pixel for all): "
           "align_corners and asymmetric resizes are shifted")
MODES = ("nearest", "linear")


def targets(model) -> list:
    known, values = graph.shapes(model), graph.constants(model)
    return [n for n in model.graph.node if n.op_type == "Resize" and _plan(n, known, values) is not None]


def matches(model) -> bool:
    return bool(targets(model))


def _plan(node, known: dict, values: dict) -> list[tuple[int, np.ndarray]] | None:
    """[(axis, matrix out x in)] for the axes whose mapping differs from half-pixel; None when not applicable."""
    source, result = known.get(node.input[0]), known.get(node.output[0])
    if (source is None or result is None or len(source) not in (3, 4) or graph.attribute(node, "mode") not in MODES
            or graph.attribute(node, "antialias", 0) or graph.attribute(node, "axes") is not None
            or source[:2] != result[:2] or graph.ambiguous_layout(source, result)):
        return None
    scales = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    plan = []
    for axis in range(2, len(source)):
        scale = float(scales[axis]) if scales is not None and len(scales) else result[axis] / source[axis]
        wanted = interpolation(node, source[axis], result[axis], scale)
        if not np.allclose(wanted, half_pixel(graph.attribute(node, "mode"), source[axis], result[axis]), atol=1e-6):
            plan.append((axis, wanted))
    return plan or None


def source_coordinates(mode: str, size_in: int, size_out: int, scale: float) -> np.ndarray:
    """Where each output position samples the input (ONNX Resize's coordinate_transformation_mode)."""
    out = np.arange(size_out, dtype=np.float64)
    if mode == "align_corners":
        return out * (size_in - 1) / (size_out - 1) if size_out > 1 else np.zeros(size_out)
    if mode == "asymmetric":
        return out / scale
    if mode == "pytorch_half_pixel" and size_out == 1:
        return np.zeros(size_out)
    return (out + 0.5) / scale - 0.5  # half_pixel, pytorch_half_pixel


def interpolation(node, size_in: int, size_out: int, scale: float) -> np.ndarray:
    mode = graph.attribute(node, "coordinate_transformation_mode", "half_pixel")
    coords = source_coordinates(mode, size_in, size_out, scale)
    if graph.attribute(node, "mode") == "nearest":
        return _nearest(_round(coords, graph.attribute(node, "nearest_mode", "round_prefer_floor")), size_in)
    return _linear(coords, size_in)


def half_pixel(mode: str, size_in: int, size_out: int) -> np.ndarray:
    """What onnx2tf computes instead: TensorFlow's half-pixel resize (nearest: floor((o + 0.5) · in / out))."""
    scale = size_out / size_in
    out = np.arange(size_out, dtype=np.float64)
    if mode == "nearest":
        return _nearest(np.floor((out + 0.5) / scale), size_in)
    return _linear((out + 0.5) / scale - 0.5, size_in)


def _round(coords: np.ndarray, nearest_mode: str) -> np.ndarray:
    rounding = {"floor": np.floor(coords), "ceil": np.ceil(coords), "round_prefer_ceil": np.floor(coords + 0.5),
                "round_prefer_floor": np.ceil(coords - 0.5)}
    return rounding[nearest_mode]


def _nearest(index: np.ndarray, size_in: int) -> np.ndarray:
    matrix = np.zeros((len(index), size_in), np.float32)
    matrix[np.arange(len(index)), np.clip(index, 0, size_in - 1).astype(int)] = 1.0
    return matrix


def _linear(coords: np.ndarray, size_in: int) -> np.ndarray:
    coords = np.clip(coords, 0, size_in - 1)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    weight = coords - low
    matrix = np.zeros((len(coords), size_in), np.float64)
    np.add.at(matrix, (np.arange(len(coords)), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(len(coords)), high), weight)
    return matrix.astype(np.float32)


def apply(model):
    model = graph.copy_model(model)
    known, values = graph.shapes(model), graph.constants(model)
    for node in targets(model):
        rank, current, nodes = len(known[node.input[0]]), node.input[0], []
        for axis, matrix in _plan(node, known, values):
            current = _resize_axis(model, nodes, node.name, current, axis, rank, matrix)
        nodes[-1].output[0] = node.output[0]
        nodes[-1].name = node.name
        graph.replace_node(model, node, nodes)
    return model


def _resize_axis(model, nodes: list, name: str, source: str, axis: int, rank: int, matrix: np.ndarray) -> str:
    """Transpose `axis` last, MatMul by the matrix, transpose back. onnx2tf converts a MatMul right when its
    input comes from an explicit Transpose (measured); on a 4-D activation directly it fails."""
    perm = list(range(rank))
    swap = (axis, rank - 1) if axis != rank - 1 else (rank - 3, rank - 2)
    perm[swap[0]], perm[swap[1]] = perm[swap[1]], perm[swap[0]]
    moved, product, back = (f"{name}_axis{axis}_{what}" for what in ("moved", "resized", "back"))
    weights = graph.add_constant(model, f"{name}_matrix{axis}", matrix.T.copy())
    nodes += [graph.make_node("Transpose", [source], [moved], moved, perm=perm),
              graph.make_node("MatMul", [moved, weights], [product], product),
              graph.make_node("Transpose", [product], [back], back, perm=perm)]
    return back
