"""LayerNormalization over more than the last axis -> ReduceMean, Sub, Mul, Sqrt, Div, Mul, Add.

onnx2tf fails on LayerNormalization of a 3-5-D tensor whose normalised axes include the channel axis (e.g.
nn.LayerNorm([C, H, W]) on NCHW): "Eager execution of tf.constant with unsupported shape". Spelled out in
elementary ops, with the scale and bias broadcast over the same axes, it converts.
"""

from __future__ import annotations

import numpy as np

from edgekit.routes.litert.repairs import graph

NAME = "layernorm-as-reductions"
PROBLEM = "onnx2tf cannot convert LayerNormalization over several axes of a 3-5-D tensor: the conversion fails"


def targets(model) -> list:
    known = graph.shapes(model)
    return [node for node in model.graph.node if node.op_type == "LayerNormalization" and _axes(node, known)]


def matches(model) -> bool:
    return bool(targets(model))


def _axes(node, known: dict) -> list[int] | None:
    rank = len(known.get(node.input[0], ()))
    axis = graph.attribute(node, "axis", -1) % rank if rank else -1
    if (not 3 <= rank <= 5 or axis == rank - 1 or len([o for o in node.output if o]) != 1
            or graph.ambiguous_layout(known[node.input[0]])):
        return None
    return list(range(axis, rank))


def apply(model):
    model = graph.copy_model(model)
    known = graph.shapes(model)
    for node in targets(model):
        graph.replace_node(model, node, _layernorm_nodes(model, node, _axes(node, known)))
    return model


def _layernorm_nodes(model, node, axes: list[int]) -> list:
    name, nodes = node.name, []

    def op(op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        output = out or f"{name}_{len(nodes)}_{op_type.lower()}"
        nodes.append(graph.make_node(op_type, list(inputs), [output], name if out else output, **attrs))
        return output

    axes_name = graph.add_constant(model, f"{name}_axes", np.int64(axes))
    centred = op("Sub", node.input[0], op("ReduceMean", node.input[0], axes_name, keepdims=1))
    variance = op("ReduceMean", op("Mul", centred, centred), axes_name, keepdims=1)
    epsilon = graph.add_constant(model, f"{name}_epsilon", np.float32(graph.attribute(node, "epsilon", 1e-5)))
    normalised = op("Div", centred, op("Sqrt", op("Add", variance, epsilon)))
    has_bias = len(node.input) > 2 and node.input[2]
    scaled = op("Mul", normalised, node.input[1], out=None if has_bias else node.output[0])
    if has_bias:
        op("Add", scaled, node.input[2], out=node.output[0])
    return nodes
