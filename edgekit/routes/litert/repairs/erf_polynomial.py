"""Erf (exact GELU's core) -> the Abramowitz-Stegun 7.1.26 rational approximation, in builtin ops only.

onnx2tf maps Erf to TensorFlow's Erf, which LiteRT has only as a Flex (Select TF) op: the model does not load
without the Flex delegate, which Android apps rarely ship. erf(x) = sign(x) · (1 − t·P(t) · exp(−x²)) with
t = 1 / (1 + p·|x|) and P a degree-4 polynomial differs from erf by at most 1.5e-7 (float32 rounding level).
"""

from __future__ import annotations

import numpy as np

from edgekit.routes.litert.repairs import graph

NAME = "erf-as-polynomial"
PROBLEM = "onnx2tf turns Erf (exact GELU) into a Flex op that LiteRT on a phone cannot run"
P = 0.3275911
A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # a1..a5


def targets(model) -> list:
    return [node for node in model.graph.node if node.op_type == "Erf"]


def matches(model) -> bool:
    return bool(targets(model))


def apply(model):
    model = graph.copy_model(model)
    for node in targets(model):
        graph.replace_node(model, node, _erf_nodes(model, node))
    return model


def _erf_nodes(model, node) -> list:
    x, name, nodes = node.input[0], node.name, []

    def op(op_type: str, *inputs: str, out: str | None = None) -> str:
        output = out or f"{name}_{len(nodes)}_{op_type.lower()}"
        nodes.append(graph.make_node(op_type, list(inputs), [output], name if out else output))
        return output

    def const(value: float) -> str:
        return graph.add_constant(model, f"{name}_c{len(nodes)}", np.float32(value))

    magnitude = op("Abs", x)
    t = op("Div", const(1.0), op("Add", op("Mul", magnitude, const(P)), const(1.0)))
    poly = const(A[-1])
    for coefficient in reversed(A[:-1]):  # Horner: ((a5·t + a4)·t + a3)·t ...
        poly = op("Add", op("Mul", poly, t), const(coefficient))
    gauss = op("Exp", op("Neg", op("Mul", x, x)))
    positive = op("Sub", const(1.0), op("Mul", op("Mul", poly, t), gauss))
    op("Mul", op("Sign", x), positive, out=node.output[0])
    return nodes
