"""Small helpers over the torch.fx graphs of torch.export programs: an op's name, and a run that sees every node."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def node_op(node: Any) -> str:
    """The ATen op of a graph node without its overload ("conv2d" for aten.conv2d.default), else its target."""
    return getattr(getattr(node.target, "_overloadpacket", None), "__name__", str(node.target))


def run_nodes(module: Any, samples: list[tuple], hook: Callable[[Any, Any], Any]) -> list[Any]:
    """Run each sample (a tuple of input tensors) through the graph without gradients; `hook(node, output)` sees
    every node's output and returns what the graph goes on with. The graph's outputs, one per sample."""
    import torch

    class Interpreter(torch.fx.Interpreter):
        def run_node(self, node):
            return hook(node, super().run_node(node))

    interpreter = Interpreter(module)
    with torch.no_grad():
        return [interpreter.run(*sample) for sample in samples]
