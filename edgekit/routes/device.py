"""The device model a route produced, and how to run it: one description for every target family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import ConversionError
from edgekit.runners.base import Runner
from edgekit.runners.binding import Binding

PASSED_THROUGH = ("int32", "int64")  # input dtypes a device model takes as they are (never quantized)
WEIGHT_ONLY = "int8-weights"  # a layer computed in float with its weights in INT8 (the back-off's starting rung)


@dataclass(frozen=True)
class DeviceModel:
    """A built device model: file, the float version it came from, runtime identity and I/O bindings."""

    path: Path
    bundle_name: str
    float_path: Path | None
    runtime: dict
    bindings: dict  # {"inputs": [binding dicts], "outputs": [...]} for manifest.json and check.py
    open_runner: Callable[[Path], Runner]
    open_float_runner: Callable[[], Runner] | None
    output_steps: dict[str, float | None] = field(default_factory=dict)
    extra_files: dict[str, Path] = field(default_factory=dict)
    model_files: tuple[str, ...] = ()  # extra_files the runtime loads with the model (OpenVINO's .bin): sized with it
    notes: list[str] = field(default_factory=list)  # go into the report's warnings: what the user must know
    per_layer: Callable[[dict[str, np.ndarray]], list[dict]] | None = None  # samples -> report `layers` rows
    with_float: Callable[[list[dict]], DeviceModel] | None = None  # rebuild keeping these `layers` rows in float
    # rebuild with `layers` rows in other precisions, {precision: rows} ("int16x8", "float32", WEIGHT_ONLY)
    with_precisions: Callable[[dict[str, list[dict]]], DeviceModel] | None = None
    float_modules: tuple[str, ...] = ()  # what a fallback kept in float
    # pairs of `layers` tensors one weightless op apart in the model the route quantized: the ladder moves rows
    # linked this way and sharing one INT8 grid together (edgekit/measure/groups.py)
    layer_links: Callable[[], list[tuple[str, str]]] | None = None
    # a route's own accuracy-aware fallback, for routes without per-layer rows (OpenVINO: NNCF's accuracy control)
    own_fallback: Callable[[], DeviceModel] | None = None
    conversion: dict = field(default_factory=dict)  # extra keys of report.json's conversion block (repairs, ...)
    quantization: dict = field(default_factory=dict)  # extra keys of report.json's quantization block
    # the device model's weight tensors [(name, array)], zero points removed: compression preservation is checked
    # in them (None: the route cannot read them, and the report's device columns stay null)
    weights: Callable[[Path], list[tuple[str, np.ndarray]]] | None = None
    reused: tuple[str, ...] = ()  # the route's steps taken from the step cache (edgekit/cache/keys.py)


def io_types(device: DeviceModel) -> dict[str, str]:
    """{"input x": dtype, "output y": dtype} of the device model's bindings, as the route read them."""
    return {f"{side[:-1]} {b['model_name']}": b["dtype"] for side in ("inputs", "outputs")
            for b in device.bindings[side]}


def check_io(device: DeviceModel, io: str | None = None, before: DeviceModel | None = None) -> None:
    """The I/O contract (docs/design.md): every binding takes the promised `io` dtype (integer inputs passed through
    as they are), or, for a rebuild of `before` (a ladder step), keeps `before`'s types. ConversionError otherwise:
    a step that breaks it is not taken."""
    found = io_types(device)
    wanted = io_types(before) if before is not None else {
        key: dtype if dtype in PASSED_THROUGH else io for key, dtype in found.items()}
    broken = [f"{key} is {found.get(key)} (promised {dtype})" for key, dtype in wanted.items()
              if found.get(key) != dtype]
    if broken:
        raise ConversionError(f"the device model breaks its I/O contract: {'; '.join(broken)}",
                              hint="report this model: whatever a layer computes in, the model's inputs and outputs "
                                   "keep the --io type")


def step_name(moves: dict[str, list[dict]]) -> str:
    """A file or folder name for one ladder step, unique to the layers it moves and where: two steps moving as many
    layers must not overwrite each other's model (a kept step's file is shipped after others were tried)."""
    import hashlib

    spelled = ";".join(f"{p}:{','.join(sorted(r['tensor'] for r in rows))}" for p, rows in sorted(moves.items()))
    counts = "_".join(f"{p}{len(rows)}" for p, rows in sorted(moves.items()))
    return f"{counts}-{hashlib.sha256(spelled.encode()).hexdigest()[:10]}"


def model_bytes(device: DeviceModel) -> int:
    """The device model's size on disk, with the files its runtime loads along (OpenVINO's .bin)."""
    files = [device.path, *(device.extra_files[name] for name in device.model_files)]
    return sum(path.stat().st_size for path in files)


def tolerances(device: DeviceModel, precision: str, golden: dict[str, np.ndarray]) -> dict[str, float]:
    """How far check.py lets a device output move from the golden one: 3 INT8 steps, or a dtype-relative bound."""
    atol = {}
    for name, values in golden.items():
        step = device.output_steps.get(name)
        peak = float(np.max(np.abs(values))) if values.size else 0.0
        if precision == "int8" and step:
            atol[name] = 3.0 * step
        else:
            atol[name] = (1e-2 if precision != "fp32" else 1e-4) * peak + 1e-6
    return atol


def onnx_bindings(export) -> dict:
    """The export's own I/O, by ONNX tensor name: float32, and integer inputs (token ids, masks) as they are; for
    device models that keep the export's I/O (Q/DQ ONNX, ORT, OpenVINO IR, ExecuTorch)."""
    def bind(specs):
        return [Binding(s.name, s.name, index, dtype=s.dtype if s.dtype in PASSED_THROUGH else "float32").to_dict()
                for index, s in enumerate(specs)]

    return {"inputs": bind(export.inputs), "outputs": bind(export.outputs), "mapping": "by ONNX tensor name"}
