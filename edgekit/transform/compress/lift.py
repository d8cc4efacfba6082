"""A `.pt2` or TorchScript model as a module that compression can work on: its exported graph, with every
convolution, linear and batch-norm call turned back into an `nn.Conv*d` / `nn.Linear` / `nn.BatchNorm*d` that
holds the very same parameters under their original names (`features.0.0`, not `conv2d_3`).

torch-pruning, the forward hooks that find the layers and the recovery fine-tune need module types; an exported
graph keeps only `aten.conv2d(x, weight, bias, ...)` calls on parameters. Lifting changes no number: the lifted
module computes exactly what the graph computes. TorchScript goes through torch's TorchScript-to-export converter
first (no Python code of the user's runs; the scripted graph is translated op by op)."""

from __future__ import annotations

from typing import Any

from edgekit.errors import UnsupportedError, first_line

CONV = {"aten.conv1d.default": 1, "aten.conv2d.default": 2}
BATCH_NORM = "aten.batch_norm.default"
LINEAR = "aten.linear.default"
TRACED_CONV = ("aten.convolution.default", "aten._convolution.default")  # (x, w, b, stride, pad, dil, transposed, ..)


def exported_program(model: Any, example: tuple) -> Any:
    """The ExportedProgram of a `.pt2` (as loaded) or of a TorchScript module (converted)."""
    if model.kind == "exported_program":
        return model.program
    try:
        from torch._export.converter import TS2EPConverter

        program = TS2EPConverter(model.module, example).convert()
    except Exception as exc:  # the converter raises many kinds of errors on scripted code it cannot translate
        raise UnsupportedError(f"cannot translate TorchScript {model.source} to an exported graph: "
                               f"{first_line(exc)}",
                               hint="save the model with torch.export.save (.pt2) or give package.module:factory"
                               ) from None
    _plain_convolutions(program)
    return program


def _plain_convolutions(program: Any) -> None:
    """A TorchScript convolution comes back as `aten.convolution` (with a `transposed` flag); as `aten.conv1d` /
    `aten.conv2d`, which is what a `.pt2` holds, it is found by lifting and by equalization alike."""
    import torch

    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or str(node.target) not in TRACED_CONV or node.args[6]:
            continue
        rank = len(getattr(node.args[1].meta.get("val"), "shape", ()))
        if rank not in (3, 4):
            continue
        target = torch.ops.aten.conv1d.default if rank == 3 else torch.ops.aten.conv2d.default
        x, weight, bias, stride, padding, dilation = node.args[:6]
        with graph.inserting_before(node):
            conv = graph.call_function(target, (x, weight, bias, stride, padding, dilation, node.args[8]))
        conv.meta = dict(node.meta)
        node.replace_all_uses_with(conv)
        graph.erase_node(node)
    program.graph_module.recompile()


def lifted_module(program: Any) -> Any:
    """An fx GraphModule computing `program`, with its conv / linear / batch-norm calls as real layer modules."""
    graph_module = program.module()
    graph = graph_module.graph
    for node in list(graph.nodes):
        target = str(node.target)
        if node.op != "call_function" or target not in (*CONV, LINEAR, BATCH_NORM):
            continue
        owner = _owner(graph_module, node)
        if owner is None:
            continue
        layer = _layer(target, node, graph_module, owner)
        if layer is None:
            continue
        _replace(graph_module, owner, layer)
        with graph.inserting_before(node):
            call = graph.call_module(owner, (node.args[0],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    for node in [n for n in graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]:
        graph.erase_node(node)  # a check of the input shapes at export time; batches of any size run after lifting
    graph.eliminate_dead_code()
    import torch

    # a plain GraphModule: the exported one refuses .eval() and .train(), which recovery needs
    return torch.fx.GraphModule(graph_module, graph).eval()


def _owner(graph_module: Any, node: Any) -> str | None:
    """The module path that holds the call's weight (`features.0.0` for `features.0.0.weight`)."""
    weight = node.args[1] if len(node.args) > 1 else None
    if getattr(weight, "op", None) != "get_attr" or not str(weight.target).endswith(".weight"):
        return None
    return str(weight.target)[: -len(".weight")]


def _layer(target: str, node: Any, graph_module: Any, owner: str) -> Any:
    import torch

    holder = graph_module.get_submodule(owner)
    weight, bias = holder.weight, getattr(holder, "bias", None)
    args = list(node.args) + [None] * 9
    if target in CONV:
        stride, padding, dilation, groups = (args[3] or 1), (args[4] or 0), (args[5] or 1), (args[6] or 1)
        cls = torch.nn.Conv1d if CONV[target] == 1 else torch.nn.Conv2d
        layer = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                    padding=padding, dilation=dilation, groups=groups, bias=bias is not None)
    elif target == LINEAR:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        rank = len(getattr(node.args[0].meta.get("val"), "shape", ()))
        if args[5] or rank not in (2, 3, 4) or not hasattr(holder, "running_mean"):
            return None
        cls = torch.nn.BatchNorm2d if rank == 4 else torch.nn.BatchNorm1d
        layer = cls(weight.shape[0], eps=float(args[7]), momentum=float(args[6]))
        layer.running_mean, layer.running_var = holder.running_mean, holder.running_var
    layer.weight = _parameter(weight)
    if bias is not None:
        layer.bias = _parameter(bias)
    return layer


def _parameter(tensor: Any) -> Any:
    """A loaded `.pt2` may hold its weights as plain tensors; layer modules need parameters."""
    import torch

    return tensor if isinstance(tensor, torch.nn.Parameter) else torch.nn.Parameter(tensor.detach().clone())


def _replace(graph_module: Any, path: str, layer: Any) -> None:
    parent, _, name = path.rpartition(".")
    holder = graph_module.get_submodule(parent) if parent else graph_module
    if any(True for _ in getattr(holder, name).children()):
        raise UnsupportedError(f"cannot lift layer {path}: it holds other modules", hint="give package.module:factory")
    setattr(holder, name, layer)
