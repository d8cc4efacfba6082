"""Compression of an ONNX model on its weight initializers: unstructured pruning and weight clustering.

The weights of Conv, Gemm and MatMul nodes are the layers (named after their initializer, `features.0.0` for
`features.0.0.weight`); the same pruning and clustering code as for PyTorch models runs on them, output channels
first, and the changed initializers are written to a new ONNX file. Structured pruning (which rewrites shapes
through the graph) and recovery (which needs a training graph) are refused with a hint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.config.options import Cluster, Prune
from edgekit.errors import UnsupportedError
from edgekit.inputs.model import LoadedModel
from edgekit.transform.compress.common import (
    as_dict,
    cluster_layers,
    compression_block,
    layer_channels,
    prune_layers,
)
from edgekit.transform.compress.scope import Layer, StepReport, with_edges
from edgekit.transform.export import path_from_node_name

WEIGHT_INPUT = {"Conv": 1, "Gemm": 1, "MatMul": 1}


@dataclasses.dataclass(frozen=True)
class OnnxLayer:
    """A weight initializer read by a Conv, Gemm or MatMul: its layer name, initializer and output-channel axis."""

    name: str
    initializer: str
    op_type: str
    out_axis: int


def compress_onnx(model: LoadedModel, prune: Prune | None, cluster: Cluster | None, recover_steps: int,
                  workdir: Path) -> tuple[LoadedModel, dict]:
    """The compressed ONNX model (a new file under `workdir`) and the report's `compression` block."""
    import onnx
    from onnx import numpy_helper

    if prune is not None and prune.mode == "structured":
        raise UnsupportedError("structured pruning removes channels, which rewrites shapes all through the graph; "
                               "edgekit does not rewrite ONNX graphs that way",
                               hint="prune unstructured (--prune-mode unstructured), or give the .pt2, TorchScript "
                                    "or package.module:factory form of the model")
    if recover_steps:
        raise UnsupportedError("--recover fine-tunes in PyTorch; an ONNX model has no training graph",
                               hint="drop --recover, or give the .pt2, TorchScript or package.module:factory form")
    proto = onnx.load(str(model.onnx_path))
    found = onnx_layers(proto)
    initializers = {i.name: i for i in proto.graph.initializer}
    holder = _holder({layer.name: _torch_layout(numpy_helper.to_array(initializers[layer.initializer]), layer)
                      for layer in found})
    layers = with_edges([Layer(layer.name, _types(layer, initializers)) for layer in found])
    channels = {layer.name: layer_channels(holder, layer.name) for layer in found}
    params_before = sum(int(np.prod(i.dims)) for i in proto.graph.initializer)
    reports: dict[str, StepReport] = {}
    if prune is not None:
        reports["prune"] = prune_layers(holder, prune, layers, None)
    if cluster is not None:
        reports["cluster"] = cluster_layers(holder, cluster, layers)[0]
    for layer in found:
        array = _onnx_layout(holder.get_submodule(layer.name).weight.detach().numpy(), layer)
        initializers[layer.initializer].CopyFrom(numpy_helper.from_array(array, layer.initializer))
    before = (None, params_before)
    block = compression_block(holder, layers, channels, reports, False, {}, before, before)
    block.update(recovered_steps=0, recovery=None, mode=prune.mode if prune else None,
                 clusters=cluster.clusters if cluster else None, format="onnx",
                 nonzero_params_after=sum(int(np.count_nonzero(numpy_helper.to_array(i)))
                                          for i in proto.graph.initializer),
                 config={"prune": as_dict(prune), "cluster": as_dict(cluster)})
    out = workdir / "compressed.onnx"
    onnx.save(proto, str(out))
    return dataclasses.replace(model, onnx_path=out), block


def onnx_layers(proto: Any) -> list[OnnxLayer]:
    """The compressible weights in graph order, each initializer once (a shared weight is one layer)."""
    from onnx import helper

    initializers = {i.name: i for i in proto.graph.initializer}
    layers: dict[str, OnnxLayer] = {}
    for node in proto.graph.node:
        index = WEIGHT_INPUT.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in initializers:
            continue
        name = node.input[index]
        if len(initializers[name].dims) < 2 or name in {layer.initializer for layer in layers.values()}:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not attributes.get("transB", 0))
        layer_name = _layer_name(name, node.name)
        layers[layer_name] = OnnxLayer(layer_name, name, node.op_type, 1 if transposed else 0)
    return list(layers.values())


def _layer_name(initializer: str, node: str) -> str:
    """`features.0.0` from `features.0.0.weight`; from a torch-exported node `/features/features.0/Conv` when the
    exporter renamed the weight (`onnx::Conv_31` after folding a batch norm), or
    `/features/3/Conv`; else the initializer's name."""
    if initializer.endswith(".weight"):
        return initializer[: -len(".weight")]
    return path_from_node_name(node) or initializer


def layer_weights(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The named layers' weights in a (compressed) ONNX file, output channels first."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    initializers = {i.name: i for i in proto.graph.initializer}
    return {layer.name: _torch_layout(numpy_helper.to_array(initializers[layer.initializer]), layer)
            for layer in onnx_layers(proto) if layer.name in names}


def _torch_layout(array: np.ndarray, layer: OnnxLayer) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, layer.out_axis, 0))


def _onnx_layout(array: np.ndarray, layer: OnnxLayer) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, 0, layer.out_axis))


def _types(layer: OnnxLayer, initializers: dict) -> tuple[str, ...]:
    rank = len(initializers[layer.initializer].dims)
    torch_type = f"Conv{rank - 2}d" if layer.op_type == "Conv" else "Linear"
    return torch_type, layer.op_type


def _holder(weights: dict[str, np.ndarray]) -> Any:
    """A torch module tree holding each layer's weight at its name, for the shared pruning and clustering code."""
    import torch

    root = torch.nn.Module()
    for name, array in weights.items():
        node = root
        for part in name.split("."):
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.weight = torch.nn.Parameter(torch.from_numpy(array.astype(np.float32)), requires_grad=False)
    return root
