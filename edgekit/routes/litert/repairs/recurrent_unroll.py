"""LSTM and GRU over a fixed, short sequence -> the cell unrolled in time, in 2-D MatMul and element-wise ops.

onnx2tf lowers LSTM and GRU to a TFLite WHILE loop; quantizing that to INT8 crashes TensorFlow's converter
(SIGSEGV, every LSTM and GRU tried), so no INT8 model can be built. Unrolled over the static sequence length, each
step is x_t·Wᵀ + h·Rᵀ + b, the gate activations and the state update: ops onnx2tf and the INT8 quantizer handle.
Matched when the op uses its default activations, no clip, peepholes or sequence lengths, layout 0, only its Y
output, constant weights, and at most MAX_STEPS steps (the graph grows with the sequence).
"""

from __future__ import annotations

import numpy as np

from edgekit.routes.litert.repairs import graph

NAME = "recurrent-unrolled"
PROBLEM = "onnx2tf turns LSTM and GRU into a TFLite WHILE loop whose INT8 quantization crashes the converter"
MAX_STEPS = 64
GATES = {"LSTM": 4, "GRU": 3}


def targets(model) -> list:
    known, values = graph.shapes(model), graph.constants(model)
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    return [n for n in model.graph.node if n.op_type in GATES and _fits(n, known, values, used)]


def matches(model) -> bool:
    return bool(targets(model))


def _fits(node, known: dict, values: dict, used: set[str]) -> bool:
    inputs = [*node.input, "", "", "", "", ""][:8]
    optional_absent = not inputs[4] and (node.op_type == "GRU" or not inputs[7])  # sequence_lens, peepholes
    weights = all(name in values for name in inputs[1:3]) and all(not n or n in values for n in inputs[3:7])
    shape = known.get(node.input[0])
    return (optional_absent and weights and shape is not None and len(shape) == 3 and shape[0] <= MAX_STEPS
            and graph.attribute(node, "layout", 0) == 0 and graph.attribute(node, "clip") is None
            and graph.attribute(node, "activations") is None and not graph.attribute(node, "input_forget", 0)
            and graph.attribute(node, "linear_before_reset", 1) == 1
            and not any(name in used for name in node.output[1:]))


def apply(model):
    model = graph.copy_model(model)
    known, values = graph.shapes(model), graph.constants(model)
    for node in targets(model):
        graph.replace_node(model, node, _unrolled(model, node, known[node.input[0]], values))
    return model


def _unrolled(model, node, shape: tuple[int, int, int], values: dict) -> list:
    steps, batch, _ = shape
    hidden, direction = graph.attribute(node, "hidden_size"), graph.attribute(node, "direction", "forward")
    directions = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    builder = _Builder(model, node.name)
    per_direction = []
    for index, way in enumerate(directions):
        weights = _weights(node, values, index, hidden, batch)
        order = range(steps) if way == "forward" else range(steps - 1, -1, -1)
        states = {}
        for t in order:
            x_t = builder.op("Gather", node.input[0], builder.const(np.int64(t)), axis=0)
            states[t] = _lstm_step(builder, x_t, weights) if node.op_type == "LSTM" else _gru_step(builder, x_t,
                                                                                                   weights)
        sequence = [builder.op("Unsqueeze", states[t][0], builder.const(np.int64([0]))) for t in range(steps)]
        per_direction.append(builder.op("Unsqueeze", builder.op("Concat", *sequence, axis=0),
                                        builder.const(np.int64([1]))))
    builder.op("Concat", *per_direction, axis=1, out=node.output[0])
    return builder.nodes


def _weights(node, values: dict, index: int, hidden: int, batch: int) -> dict:
    gates = GATES[node.op_type]
    inputs = [*node.input, "", "", "", ""][:7]
    bias = values[inputs[3]][index] if inputs[3] else np.zeros(2 * gates * hidden, np.float32)
    zeros = np.zeros((batch, hidden), np.float32)
    state = {"h": values[inputs[5]][index] if inputs[5] else zeros, "c": zeros}
    if node.op_type == "LSTM" and len(node.input) > 6 and node.input[6]:
        state["c"] = values[node.input[6]][index]
    return {"W": values[inputs[1]][index].T.copy(), "R": values[inputs[2]][index].T.copy(), "Wb": bias[:gates * hidden],
            "Rb": bias[gates * hidden:], "state": state, "hidden": hidden, "gates": gates}


def _lstm_step(b: _Builder, x_t: str, w: dict) -> tuple[str, str]:
    h, c = w.setdefault("h", b.const(w["state"]["h"])), w.setdefault("c", b.const(w["state"]["c"]))
    gates = b.op("Add", b.op("Add", b.op("MatMul", x_t, b.weight("W", w)), b.op("MatMul", h, b.weight("R", w))),
                 b.weight("bias", w, w["Wb"] + w["Rb"]))
    i, o, f, g = b.split(gates, w)
    i, o, f, g = b.op("Sigmoid", i), b.op("Sigmoid", o), b.op("Sigmoid", f), b.op("Tanh", g)
    w["c"] = b.op("Add", b.op("Mul", f, c), b.op("Mul", i, g))
    w["h"] = b.op("Mul", o, b.op("Tanh", w["c"]))
    return w["h"], w["c"]


def _gru_step(b: _Builder, x_t: str, w: dict) -> tuple[str, str]:
    h = w.setdefault("h", b.const(w["state"]["h"]))
    xz, xr, xn = b.split(b.op("Add", b.op("MatMul", x_t, b.weight("W", w)), b.weight("Wb", w)), w)
    hz, hr, hn = b.split(b.op("Add", b.op("MatMul", h, b.weight("R", w)), b.weight("Rb", w)), w)
    z, r = b.op("Sigmoid", b.op("Add", xz, hz)), b.op("Sigmoid", b.op("Add", xr, hr))
    n = b.op("Tanh", b.op("Add", xn, b.op("Mul", r, hn)))  # linear_before_reset = 1 (PyTorch's GRU)
    w["h"] = b.op("Add", n, b.op("Mul", z, b.op("Sub", h, n)))  # (1 − z)·n + z·h
    return w["h"], w["h"]


class _Builder:
    """Appends nodes with unique names derived from the replaced node; weights become constants once."""

    def __init__(self, model, name: str) -> None:
        self.model, self.name, self.nodes = model, name, []

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        output = out or f"{self.name}_{len(self.nodes)}_{op_type.lower()}"
        self.nodes.append(graph.make_node(op_type, list(inputs), [output], self.name if out else output, **attrs))
        return output

    def const(self, value: np.ndarray) -> str:
        return graph.add_constant(self.model, f"{self.name}_c{len(self.nodes)}", value)

    def weight(self, key: str, w: dict, value: np.ndarray | None = None) -> str:
        names = w.setdefault("names", {})
        if key not in names:
            names[key] = self.const(np.asarray(w[key] if value is None else value))
        return names[key]

    def split(self, tensor: str, w: dict) -> list[str]:
        sizes = self.weight("split", w, np.full(w["gates"], w["hidden"], np.int64))
        outputs = [f"{self.name}_{len(self.nodes)}_split{k}" for k in range(w["gates"])]
        self.nodes.append(graph.make_node("Split", [tensor, sizes], outputs, outputs[0], axis=1))
        return outputs
