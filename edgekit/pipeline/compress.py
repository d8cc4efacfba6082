"""Compression inside a build: compress the PyTorch module before export, then check on the converted model
that the zeros and the k values survived, and measure the float baseline the size ratios are relative to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgekit.errors import UnsupportedError, first_line
from edgekit.inputs.model import LoadedModel
from edgekit.inputs.plan import Plan
from edgekit.routes import get_route
from edgekit.routes.device import DeviceModel
from edgekit.transform.compress.common import preservation


def compress_model(plan: Plan, workdir: Path) -> tuple[LoadedModel, dict]:
    """A LoadedModel of the compressed copy and the report's `compression` block (device columns come later).

    An `nn.Module` is compressed as it is; a `.pt2` or TorchScript model through its lifted graph
    (`transform/compress/lift.py`); an ONNX model on its weight initializers (`transform/compress/onnx.py`)."""
    from edgekit.transform.compress.torch import compress

    model = plan.model
    if len(plan.inputs) != 1:
        raise UnsupportedError(f"compression supports models with one input; this one has {len(plan.inputs)}",
                               hint="build without --prune/--clusters")
    calibration = plan.calibration.inputs[plan.inputs[0].name]
    options, compression = plan.options, plan.options.compression
    if model.kind == "onnx":
        from edgekit.transform.compress.onnx import compress_onnx

        return compress_onnx(model, compression.prune, compression.cluster, compression.recover, workdir)
    if model.kind == "module":
        module, block = compress(model.module, compression.prune, compression.cluster, calibration, compression.recover,
                                 options.seed)
        # program=None: an exported program kept from equalization would still hold the uncompressed weights
        return dataclasses.replace(model, module=module, program=None), {**block, "format": "module"}
    return _compress_graph(model, calibration, options)


def _compress_graph(model: LoadedModel, calibration, options) -> tuple[LoadedModel, dict]:
    """`.pt2` and TorchScript: compress the lifted graph (real layer modules on the same parameters), export again."""
    import torch

    from edgekit.transform.compress.lift import exported_program, lifted_module
    from edgekit.transform.compress.torch import compress

    example = (torch.from_numpy(calibration[:1]),)
    compression = options.compression
    module, block = compress(lifted_module(exported_program(model, example)), compression.prune, compression.cluster,
                             calibration, compression.recover, options.seed)
    try:
        program = torch.export.export(module, example)
    except Exception as exc:  # a shape written into the graph no longer fits the pruned channels
        raise UnsupportedError(f"the compressed {model.kind.replace('_', ' ')} does not export again: "
                               f"{first_line(exc)}",
                               hint="structured pruning of a saved graph needs its shapes free of the channel "
                                    "counts; give package.module:factory, or prune unstructured") from None
    block["format"] = model.kind
    return dataclasses.replace(model, kind="exported_program", program=program, module=program.module()), block


def device_columns(block: dict, device: DeviceModel, model: LoadedModel, fmt: str) -> tuple[dict, list[str]]:
    """Measured sparsity and distinct values per layer in the device model, where its route can read the device
    model's weights (`DeviceModel.weights`); warnings when lost."""
    if device.weights is None:
        return block, [f"compression preservation is measured on TFLite models only; {fmt} device columns are null"]
    weights = model.module
    if model.kind == "onnx":
        from edgekit.transform.compress.onnx import layer_weights

        weights = layer_weights(model.onnx_path, [row["module"] for row in block["per_layer"]])
    rows, warnings = preservation(block, device.weights(device.path), weights)
    return {**block, "per_layer": rows}, warnings


def baseline_float_gzip(plan: Plan, workdir: Path) -> int:
    """gzip size of the float32 device model of the original, uncompressed model (the base for ratios)."""
    return get_route(plan.target.route).float_gzip_bytes(plan, workdir)
