"""Compression inside a build: compress the PyTorch module before export, then check on the converted model
that the zeros and the k values survived, and measure the float baseline the size ratios are relative to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgekit.errors import UnsupportedError, first_line
from edgekit.model import LoadedModel
from edgekit.plan import Plan


def compress_model(plan: Plan, workdir: Path) -> tuple[LoadedModel, dict]:
    """A LoadedModel of the compressed copy and the report's `compression` block (device columns come later).

    An `nn.Module` is compressed as it is; a `.pt2` or TorchScript model through its lifted graph
    (`steps/lift.py`); an ONNX model on its weight initializers (`steps/compress_onnx.py`)."""
    from edgekit.steps.compress import compress

    model = plan.model
    if len(plan.inputs) != 1:
        raise UnsupportedError(f"compression supports models with one input; this one has {len(plan.inputs)}",
                               hint="build without --prune/--clusters")
    calibration = plan.calibration.inputs[plan.inputs[0].name]
    options = plan.options
    if model.kind == "onnx":
        from edgekit.steps.compress_onnx import compress_onnx

        return compress_onnx(model, options.prune, options.cluster, options.recover, workdir)
    if model.kind == "module":
        module, block = compress(model.module, options.prune, options.cluster, calibration, options.recover,
                                 options.seed)
        # program=None: an exported program kept from equalization would still hold the uncompressed weights
        return dataclasses.replace(model, module=module, program=None), {**block, "format": "module"}
    return _compress_graph(model, calibration, options)


def _compress_graph(model: LoadedModel, calibration, options) -> tuple[LoadedModel, dict]:
    """`.pt2` and TorchScript: compress the lifted graph (real layer modules on the same parameters), export again."""
    import torch

    from edgekit.steps.compress import compress
    from edgekit.steps.lift import exported_program, lifted_module

    example = (torch.from_numpy(calibration[:1]),)
    module, block = compress(lifted_module(exported_program(model, example)), options.prune, options.cluster,
                             calibration, options.recover, options.seed)
    try:
        program = torch.export.export(module, example)
    except Exception as exc:  # a shape written into the graph no longer fits the pruned channels
        raise UnsupportedError(f"the compressed {model.kind.replace('_', ' ')} does not export again: "
                               f"{first_line(exc)}",
                               hint="structured pruning of a saved graph needs its shapes free of the channel "
                                    "counts; give package.module:factory, or prune unstructured") from None
    block["format"] = model.kind
    return dataclasses.replace(model, kind="exported_program", program=program, module=program.module()), block


def device_columns(block: dict, device_file: Path, fmt: str, model: LoadedModel) -> tuple[dict, list[str]]:
    """Measured sparsity and distinct values per layer in the device model (TFLite); warnings when lost."""
    if fmt != "tflite":
        return block, [f"compression preservation is measured on TFLite models only; {fmt} device columns are null"]
    from edgekit.steps.compress import preservation

    weights = model.module
    if model.kind == "onnx":
        from edgekit.steps.compress_onnx import layer_weights

        weights = layer_weights(model.onnx_path, [row["module"] for row in block["per_layer"]])
    rows, warnings = preservation(block, device_file, weights)
    return {**block, "per_layer": rows}, warnings


def baseline_float_gzip(plan: Plan, workdir: Path) -> int:
    """gzip size of the float32 device model of the original, uncompressed model (the base for ratios)."""
    return plan.route.float_gzip_bytes(plan, workdir)
