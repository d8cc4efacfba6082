"""Compression inside a build: compress the PyTorch module before export, then check on the converted model
that the zeros and the k values survived, and measure the float baseline the size ratios are relative to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgekit.errors import UnsupportedError
from edgekit.model import LoadedModel
from edgekit.plan import Plan


def compress_model(plan: Plan) -> tuple[LoadedModel, dict]:
    """A LoadedModel of the compressed copy and the report's `compression` block (device columns come later)."""
    from edgekit.steps.compress import compress

    model = plan.model
    if model.kind != "module":
        raise UnsupportedError(f"compression needs the model as an nn.Module; {model.source} is a {model.kind}",
                               hint="pass the nn.Module to edgekit.build, or give package.module:factory")
    if len(plan.inputs) != 1:
        raise UnsupportedError(f"compression supports models with one input; this one has {len(plan.inputs)}",
                               hint="build without --prune/--clusters")
    calibration = plan.calibration.inputs[plan.inputs[0].name]
    module, block = compress(model.module, plan.options.prune, plan.options.cluster, calibration,
                             plan.options.recover, plan.options.seed)
    return dataclasses.replace(model, module=module, name=model.name), block


def device_columns(block: dict, device_file: Path, fmt: str, module) -> tuple[dict, list[str]]:
    """Measured sparsity and distinct values per layer in the device model (TFLite); warnings when lost."""
    if fmt != "tflite":
        return block, [f"compression preservation is measured on TFLite models only; {fmt} device columns are null"]
    from edgekit.steps.compress import preservation

    rows, warnings = preservation(block, device_file, module)
    return {**block, "per_layer": rows}, warnings


def baseline_float_gzip(plan: Plan, workdir: Path) -> int:
    """gzip size of the float32 device model of the original, uncompressed model (the base for ratios)."""
    return plan.route.float_gzip_bytes(plan, workdir)
