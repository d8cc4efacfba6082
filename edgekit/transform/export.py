"""PyTorch (or ONNX) to a simplified, checked, batch-1 ONNX file: the common start of every device route."""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.cache import store as step_cache
from edgekit.cache.keys import file_step, model_key, step_key
from edgekit.errors import ModelError, UnsupportedError
from edgekit.inputs.model import LoadedModel, TensorSpec, forward_input_names, onnx_value_spec
from edgekit.utils.quiet import quiet_loggers

OPSET = 18
_ATEN_OP = re.compile(r"aten(?:\.|::)(\w+)")
MODULES_KEY = "edgekit.tensor_modules"  # model metadata: {ONNX tensor name: PyTorch module path}


@dataclass(frozen=True)
class OnnxExport:
    """The exported float model: where it is, its batch-1 inputs and its outputs."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    exporter: str
    source: Path | None = None  # the ONNX file it was made from, for a model given as ONNX


def resolve_inputs(model: LoadedModel, sample_shapes: dict[str, tuple[int, ...]] | None,
                   input_shape: tuple[int, ...] | None = None,
                   sample_dtypes: dict[str, str] | None = None) -> tuple[TensorSpec, ...]:
    """The model's inputs with batch 1: from the model itself where it says, else from the data (shape and dtype:
    matched by input name when the data names every input, else in order) or --input-shape."""
    if model.inputs:
        return tuple(_fill(spec, sample_shapes) for spec in model.inputs)
    if input_shape is not None:
        names = forward_input_names(model.module, 1)
        return (TensorSpec(names[0], (1, *tuple(input_shape)[1:])),)
    if not sample_shapes:
        raise ModelError(f"cannot tell the input shape of {model.source}",
                         hint="give calibration data or --input-shape 1,3,224,224")
    names = forward_input_names(model.module, len(sample_shapes))
    keys = names if set(sample_shapes) == set(names) else list(sample_shapes)
    dtypes = sample_dtypes or {}
    return tuple(TensorSpec(n, (1, *sample_shapes[k]), dtypes.get(k, "float32")) for n, k in zip(names, keys))


def _fill(spec: TensorSpec, sample_shapes: dict[str, tuple[int, ...]] | None) -> TensorSpec:
    """Fix the batch at 1 and take any other dynamic size from the data."""
    known = (sample_shapes or {}).get(spec.name) or (next(iter(sample_shapes.values())) if sample_shapes and len(
        sample_shapes) == 1 else None)
    dims = [1] + [d if d is not None else (known[i] if known and i < len(known) else None)
                  for i, d in enumerate(spec.shape[1:])]
    if any(d is None for d in dims):
        raise ModelError(f"input {spec.name!r} has dynamic sizes {spec.shape} that the data does not fix",
                         hint="give calibration data or --input-shape")
    if spec.shape and spec.shape[0] not in (None, 1):
        raise ModelError(f"input {spec.name!r} has a fixed batch of {spec.shape[0]}",
                         hint="export the model with batch 1 or a dynamic batch dimension")
    return TensorSpec(spec.name, tuple(dims), spec.dtype)


def export_onnx(model: LoadedModel, inputs: tuple[TensorSpec, ...], path: Path) -> OnnxExport:
    """Export (or copy and fix) the model to ONNX with batch 1, simplify it with onnxslim and check it."""
    import onnx

    if model.kind == "onnx":
        proto = _static_onnx(onnx.load(str(model.onnx_path)), inputs)
        if not any(p.key == MODULES_KEY for p in proto.metadata_props):
            _record_modules(proto)  # from a torch exporter's node names or name scopes, when it wrote them
    else:
        proto = _torch_export(model, inputs)
    proto = _name_nodes(_simplify(proto))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return described_export(model, inputs, path, proto)


def described_export(model: LoadedModel, inputs: tuple[TensorSpec, ...], path: Path, proto=None) -> OnnxExport:
    """The OnnxExport of `model`'s ONNX file at `path` (written here, or taken from the step cache)."""
    import onnx

    proto = proto if proto is not None else onnx.load(str(path), load_external_data=False)
    exporter = ("onnx file" if model.kind == "onnx" else "torch.onnx.export (dynamo)" if model.kind != "torchscript"
                else "torch.onnx.export (torchscript)")
    outputs = tuple(onnx_value_spec(v) for v in proto.graph.output)
    return OnnxExport(path=path, inputs=inputs, outputs=outputs, exporter=exporter,
                      source=model.onnx_path if model.kind == "onnx" else None)


def _torch_export(model: LoadedModel, inputs: tuple[TensorSpec, ...]):
    import onnx
    import torch

    example = tuple(torch.zeros(s.shape, dtype=getattr(torch, s.dtype)) for s in inputs)
    target = model.program if model.program is not None else model.module
    dynamo = model.kind != "torchscript"
    buffer = io.BytesIO() if not dynamo else None
    # the exporter logs each optional library it lacks (torchvision)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_loggers(["torch.onnx"]):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(target, example, buffer, dynamo=dynamo, opset_version=OPSET,
                                        input_names=[s.name for s in inputs], external_data=False)
        except Exception as exc:
            raise _export_error(exc, model) from exc
    proto = program.model_proto if dynamo else onnx.load_from_string(buffer.getvalue())
    proto = _name_outputs(proto, _output_names(model, example, len(proto.graph.output)))
    _record_modules(proto)
    return proto


def _record_modules(proto) -> None:
    """Keep which PyTorch module made each tensor (simplification drops node metadata, not model metadata)."""
    import json

    modules = {}
    for node in proto.graph.node:
        module = _node_module(node)
        if module:
            modules.update(dict.fromkeys(node.output, module))
    proto.metadata_props.add(key=MODULES_KEY, value=json.dumps(modules))


def _node_module(node) -> str | None:
    """The module path: from the dynamo exporter's name scopes, or the TorchScript exporter's /a/a.b/Op names."""
    import ast

    meta = {p.key: p.value for p in node.metadata_props}
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        scopes = [s for s in ast.literal_eval(scopes) if s]
        # the module's path; for an op in the top-level forward (no module) the op itself, e.g. "cat"
        return scopes[-2] if len(scopes) >= 2 else (scopes[-1] if scopes else None)
    return path_from_node_name(node.name)


def path_from_node_name(name: str) -> str | None:
    """The module path of a TorchScript exporter's node name: `features.1` from `/features/features.1/Relu` or
    from `/features/1/Relu` (a scripted module), `layer1.0.conv1` from `/layer1/layer1.0/conv1/Conv`; None for
    a node outside any module."""
    if not name.startswith("/"):
        return None
    path = ""
    for part in [p for p in name.split("/") if p][:-1]:
        path = part if not path or part.startswith(f"{path}.") else f"{path}.{part}"
    return path or None


def tensor_modules(path: Path) -> dict[str, str]:
    import json

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(meta.get(MODULES_KEY, "{}"))


def _export_error(exc: Exception, model: LoadedModel) -> Exception:
    ops = sorted(set(_ATEN_OP.findall(str(exc))))
    if ops:
        return UnsupportedError(f"{model.source}: operator {', '.join(ops)} has no ONNX export",
                                hint="replace it with supported ops, or exclude it from the exported graph")
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return ModelError(f"{model.source}: torch.onnx.export failed: {first}",
                      hint="check that the model runs on the calibration data and is in eval mode")


def _name_outputs(proto, names: list[str] | None = None):
    """Name outputs by the model's own names (dict keys, namedtuple fields) when it has them, else `output` (or
    output_0..k), so reports, manifests and golden files read the same for every model."""
    outputs = list(proto.graph.output)
    if names is None:
        names = ["output"] if len(outputs) == 1 else [f"output_{i}" for i in range(len(outputs))]
    for value, new in zip(outputs, names):
        if value.name != new:
            _rename_tensor(proto.graph, value.name, new)
    return proto


def _output_names(model: LoadedModel, example: tuple, count: int) -> list[str] | None:
    """Names for the flattened outputs from the structure the model returns: `bbox_reg` for a dict key or a
    namedtuple field, `heads.0` inside them; None when the outputs carry no names (a tensor, a plain tuple)."""
    import torch
    from torch.utils import _pytree as pytree

    module = model.program.module() if model.program is not None else model.module
    try:
        with torch.no_grad():
            result = module(*example)
    except Exception:  # the export ran the same forward: default names, never a failed build over naming
        return None
    leaves = [(path, v) for path, v in pytree.tree_flatten_with_path(result)[0] if isinstance(v, torch.Tensor)]
    named = any(isinstance(k, (pytree.MappingKey, pytree.GetAttrKey)) for path, _ in leaves for k in path)
    if len(leaves) != count or not named:
        return None
    names = []
    for path, _ in leaves:
        parts = [str(k.key) if isinstance(k, pytree.MappingKey) else k.name if isinstance(k, pytree.GetAttrKey)
                 else str(getattr(k, "idx", k)) for k in path]
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", ".".join(parts)) or "output"
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def _rename_tensor(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for value in graph.output:
        if value.name == old:
            value.name = new


def _static_onnx(proto, inputs: tuple[TensorSpec, ...]):
    """Pin the user's ONNX inputs to the resolved batch-1 shapes."""
    shapes = {s.name: s.shape for s in inputs}
    for value in proto.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.Clear()
                dim.dim_value = size
    return proto


def _name_nodes(proto):
    """Give unnamed nodes unique names: quantizers and per-layer reports address nodes by name."""
    taken = {node.name for node in proto.graph.node if node.name}
    for index, node in enumerate(proto.graph.node):
        if not node.name:
            candidates = (f"{node.op_type}_{index}", f"{node.op_type}_{index}_edgekit")
            node.name = next(n for n in candidates if n not in taken)
            taken.add(node.name)
    return proto


def _simplify(proto):
    import onnxslim

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return onnxslim.slim(proto)


def example_from(data_inputs: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    return {s.name: data_inputs[s.name][:1] for s in inputs}


def exported(model: Any, inputs: tuple, path: Path) -> tuple[Any, bool]:
    """The model's ONNX export at `path` (edgekit/transform/export.py), taken from the step cache when the same
    model was exported with the same inputs; True when it was."""
    if step_cache.cache_root() is None:
        return export_onnx(model, inputs, path), False
    key = step_key("export", model_key(model), json.dumps([[s.name, list(s.shape), s.dtype] for s in inputs]))
    made = []
    reused = file_step("export", key, path, lambda out: made.append(export_onnx(model, inputs, out)))
    return (described_export(model, inputs, path) if reused else made[0]), reused
