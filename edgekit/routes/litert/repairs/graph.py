"""Small ONNX graph helpers shared by the repairs: attributes, constants, static shapes, node replacement."""

from __future__ import annotations

import numpy as np


def attribute(node, name: str, default=None):
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def constants(model) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs, by tensor name."""
    from onnx import numpy_helper

    found = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def shapes(model) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor shape inference can tell (edgekit exports with batch 1, so most)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    found = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            found[value.name] = tuple(int(d.dim_value) for d in dims)
    return found


def opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def add_constant(model, name: str, array: np.ndarray) -> str:
    """Add an initializer under a name not used in the graph yet; returns that name."""
    from onnx import numpy_helper

    taken = {i.name for i in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    unique, index = name, 0
    while unique in taken:
        index += 1
        unique = f"{name}_{index}"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(array), unique))
    return unique


def replace_node(model, node, new_nodes: list) -> None:
    """Put `new_nodes` where `node` was (keeps the graph topologically sorted); the last one must produce the
    old node's outputs, so consumers and the module map stay untouched."""
    nodes = model.graph.node
    index = next(i for i, n in enumerate(nodes) if n is node or n.name == node.name)
    del nodes[index]
    for offset, new in enumerate(new_nodes):
        nodes.insert(index + offset, new)


def make_node(op_type: str, inputs: list[str], outputs: list[str], name: str, **attrs):
    from onnx import helper

    return helper.make_node(op_type, inputs, outputs, name=name, **attrs)


def copy_model(model):
    """Repairs return a rewritten copy; the caller's model stays as it was."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def node_attributes(node, skip: tuple[str, ...] = ()) -> dict:
    """A node's attributes as keyword arguments for make_node, without `skip`."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in skip}


def ambiguous_layout(*shapes_: tuple[int, ...]) -> bool:
    """True when a channel count equals a spatial size: onnx2tf then guesses layouts wrong (measured: a Mul with a
    (1, 1, 4, 4) constant on a (1, 4, 4, 4) tensor), so repairs that add layout-sensitive ops skip such tensors."""
    return any(len(s) >= 3 and s[1] in s[2:] for s in shapes_)
