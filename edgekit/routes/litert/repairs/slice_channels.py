"""A Slice that cuts the channel axis and a later axis together -> Gather on the channels, Slice on the rest.

onnx2tf moves a 3-5-D Slice to channels-last, but when one Slice cuts axis 1 (channels) and a later axis
together it slices the wrong axes: x[:, 1:, ::2, 1:7] on (1, 4, 10, 12) came out (1, 9, 6, 3) instead of
(1, 3, 5, 6). Slices of the spatial axes alone convert right, and so does a Gather of constant channel indices.
(Two chained Slices would not do: onnx2tf's simplifier fuses them back into one.)
"""

from __future__ import annotations

import numpy as np

from edgekit.routes.litert.repairs import graph

NAME = "slice-channels-as-gather"
PROBLEM = "onnx2tf slices the wrong axes when one Slice cuts the channel axis and a spatial axis together"


def targets(model) -> list:
    known, values = graph.shapes(model), graph.constants(model)
    return [n for n in model.graph.node if n.op_type == "Slice" and _cuts(n, known, values) is not None]


def matches(model) -> bool:
    return bool(targets(model))


def _cuts(node, known: dict, values: dict) -> dict[int, tuple[int, int, int]] | None:
    """{axis: (start, end, step)} of a constant Slice on a 3-5-D tensor that cuts axis 1 and another; else None."""
    rank = len(known.get(node.input[0], ()))
    inputs = [*node.input, "", "", ""][:5]
    if (not 3 <= rank <= 5 or any(name and name not in values for name in inputs[1:])
            or graph.ambiguous_layout(known[node.input[0]], known.get(node.output[0], ()))):
        return None
    starts, ends = values[inputs[1]], values[inputs[2]]
    axes = values[inputs[3]] if inputs[3] else np.arange(len(starts))
    steps = values[inputs[4]] if inputs[4] else np.ones(len(starts), np.int64)
    cuts = {int(a) % rank: (int(s), int(e), int(t)) for a, s, e, t in zip(axes, starts, ends, steps)}
    return cuts if 1 in cuts and len(cuts) > 1 else None


def channel_indices(channels: int, start: int, end: int, step: int) -> np.ndarray:
    """The channels a Slice keeps, as Python's slice semantics (which ONNX Slice follows) give them."""
    return np.arange(channels, dtype=np.int64)[slice(start, end, step)]


def apply(model):
    model = graph.copy_model(model)
    known, values = graph.shapes(model), graph.constants(model)
    for node in targets(model):
        cuts = _cuts(node, known, values)
        indices = channel_indices(known[node.input[0]][1], *cuts.pop(1))
        gathered = f"{node.name}_channels"
        index_name = graph.add_constant(model, f"{node.name}_channel_indices", indices)
        gather = graph.make_node("Gather", [node.input[0], index_name],
                                 [gathered], gathered, axis=1)
        axes = sorted(cuts)
        rest = [graph.add_constant(model, f"{node.name}_{what}", np.int64([cuts[a][i] for a in axes]))
                for i, what in enumerate(("starts", "ends", "steps"))]
        axes_name = graph.add_constant(model, f"{node.name}_axes", np.int64(axes))
        spatial = graph.make_node("Slice", [gathered, rest[0], rest[1], axes_name, rest[2]], list(node.output),
                                  node.name)
        graph.replace_node(model, node, [gather, spatial])
    return model
