"""Verification: the device model measured against the original on the eval data (host, then the ARM64
emulator), per-layer drift where the route can measure it, and each layer's sensitivity for the fallback."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from edgekit.config.options import Gate
from edgekit.config.target import LAYER_PRECISION
from edgekit.emulator.drift import measure as measure_in_emulator
from edgekit.errors import EdgekitError
from edgekit.inputs.model import LoadedModel
from edgekit.inputs.plan import Plan
from edgekit.measure.drift import drift_block, output_metrics
from edgekit.measure.layers import activation_bytes, layer_samples
from edgekit.measure.measured import Measured
from edgekit.measure.reference import reference_outputs, reference_runner
from edgekit.measure.sensitivity import layer_sensitivity
from edgekit.measure.tasks import Reading
from edgekit.routes import get_route
from edgekit.routes.device import DeviceModel, model_bytes
from edgekit.transform.export import OnnxExport

LAYER_SAMPLES = 32
INT8_SIZE_RATIO = 0.5  # an INT8 device model above this share of its float32 one is barely smaller: say why


def evaluate(plan: Plan, export: OnnxExport, device: DeviceModel, device_plan: Plan, reading: Reading,
             reference: References | None = None) -> Measured:
    """Drift on the eval data, plus per-layer drift where the route can measure it."""
    measured = measure(plan, export, device, device_plan, reading, reference)
    if device.per_layer is None:
        return measured
    count = layer_samples(export.path, min(LAYER_SAMPLES, plan.evaluation.size))
    samples = {k: v[:count] for k, v in plan.evaluation.inputs.items()}
    default = LAYER_PRECISION.get(plan.target.precision, "int8")
    rows = [{"precision": default, "chosen_because": f"{default.upper()} by default", **row}
            for row in device.per_layer(samples)]
    notes = [] if count >= min(LAYER_SAMPLES, plan.evaluation.size) else [
        f"per-layer drift on {count} samples: the model's activations take "
        f"{activation_bytes(export.path) / 1e6:.0f} MB a sample"]
    return replace(measured, layers=rows, warnings=[*measured.warnings, *notes])


def sensitivity(export: OnnxExport, groups: list[list[dict]], plan: Plan) -> dict[str, float]:
    """Each group of quantized activations' effect on the output alone (edgekit/measure/sensitivity.py), on eval
    samples."""
    return layer_sensitivity(export.path, groups, plan.evaluation.inputs)


def gate(plan: Plan) -> Gate:
    """The build's gate, its SQNR floor and detection floors resolved to the target's where the user set none."""
    given, target = plan.options.gate, plan.target
    return replace(given, min_sqnr=target.min_sqnr_db if given.min_sqnr is None else given.min_sqnr,
                   min_recall=target.min_recall if given.min_recall is None else given.min_recall,
                   min_precision=target.min_precision if given.min_precision is None else given.min_precision)


@dataclass(frozen=True)
class References:
    """The original model's outputs on the eval data, and the converted (compressed, equalized) model's, measured
    once per build and reused by every candidate the fallback tries."""

    original: dict[str, np.ndarray]
    converted: dict[str, np.ndarray]
    reused: bool


def references(plan: Plan, export: OnnxExport, device_plan: Plan) -> References:
    reference, reused = _reference(plan, export)
    converted = reference
    if not _same_weights(plan.model, device_plan.model):  # compressed or equalized: run those weights too
        converted, _ = _reference(device_plan, export)
    return References(reference, converted, reused)


def measure(plan: Plan, export: OnnxExport, device: DeviceModel, device_plan: Plan, reading: Reading,
            known: References | None = None) -> Measured:
    """Drift against the original model; the converter's error against the model that was converted (the
    compressed one, when compressing), so compression, conversion and quantization errors stay apart."""
    data = plan.evaluation
    known = known or references(plan, export, device_plan)
    reference, converted, reused = known.original, known.converted, known.reused
    with device.open_float_runner() as runner:
        floats = runner.run(data.inputs)
    with device.open_runner(device.path) as runner:
        outputs = runner.run(data.inputs)
        latency = runner.median_latency_ms()
    drift = drift_block(reference, outputs, data.labels, reading.tasks, gate(plan), plan.options.data.ignore_index,
                        reading.detectors, data.boxes)
    quantized = plan.target.precision != "fp32"
    return Measured(
        reference=reference, device=outputs, conversion=output_metrics(converted, floats),
        quantization=output_metrics(floats, outputs) if quantized else None, drift=drift,
        latency_ms={"host": latency}, warnings=_warnings(plan, drift, reference, outputs) + device.notes,
        reused=("reference",) if reused else ())


def _reference(plan: Plan, export: OnnxExport) -> tuple[dict[str, np.ndarray], bool]:
    """The plan's model on the eval inputs (from the step cache when another build ran the same)."""
    def run() -> dict[str, np.ndarray]:
        with reference_runner(plan, export) as runner:
            return runner.run(plan.evaluation.inputs)

    return reference_outputs(plan.model, plan.evaluation.inputs, [o.name for o in export.outputs], run)


def _same_weights(model: LoadedModel, other: LoadedModel) -> bool:
    return model.module is other.module and model.onnx_path == other.onnx_path


def measure_emulated(plan: Plan, device: DeviceModel, measured: Measured, count: int,
                     reading: Reading) -> Measured:
    inputs = {k: v[:count] for k, v in plan.evaluation.inputs.items()}
    block = measure_in_emulator(device.path, device.bindings, inputs, measured.reference, measured.device,
                                reading, gate(plan), plan.target.cpu, plan.options.verify.emulator_seconds)
    warnings = list(measured.warnings)
    if block["error"]:
        warnings.append(f"emulator run failed: {block['error']}")
    elif not block["bit_exact_with_host"]:
        worst = max(block["max_abs_diff_vs_host"].values())
        warnings.append(f"emulator outputs differ from the host run (max {worst:.3g})")
    return replace(measured, emulator=block, warnings=warnings)


def _warnings(plan: Plan, drift: dict, reference: dict, outputs: dict) -> list[str]:
    notes = list(plan.warnings)
    if plan.eval_source != "eval":
        notes.append(f"no eval data given: drift measured on {plan.evaluation.size} held-out calibration samples")
    if drift["top1_agreement"] is not None and plan.evaluation.labels is None:
        notes.append("eval data has no labels: accuracy drop not measured, agreement only")
    for row in drift["outputs"]:
        found = row.get("detection")
        if found is not None and found["float_detections"] == 0:
            notes.append(f"output {row['name']}: the float model detects nothing on the eval data at confidence "
                         f"{found['confidence']}: recall and precision vs float measure nothing; check the eval "
                         "images (objects in them, the preprocessing) or the [detect] settings")
    if any(not np.all(np.isfinite(v)) for v in reference.values()):
        notes.append("the reference model itself produces NaN/inf on the eval data")
    return notes


def size_note(plan: Plan, device: DeviceModel) -> str | None:
    """Why an INT8 device model is barely smaller than its float32 one, read from its own weights and ops."""
    if plan.target.precision != "int8" or device.float_path is None or not device.float_path.exists():
        return None
    size, float_size = model_bytes(device), device.float_path.stat().st_size
    if size <= INT8_SIZE_RATIO * float_size:
        return None
    head = f"the INT8 model is {size / float_size:.0%} of the float32 model's size ({size:,} vs {float_size:,} bytes)"
    if device.weights is None:
        return f"{head}: `edgekit inspect` on the bundle lists which tensors stay float"
    weights = device.weights(device.path)
    floats = sorted(((a.nbytes, n) for n, a in weights if np.issubdtype(a.dtype, np.floating)), reverse=True)
    total, kept = sum(a.nbytes for _, a in weights), sum(b for b, _ in floats)
    if kept > 0.25 * size:
        largest = ", ".join(name for _, name in floats[:3])
        return (f"{head}: {kept:,} of its {total:,} weight bytes stay float (largest: {largest}); the converter kept "
                "them out of INT8 (ops without INT8 kernels, or hybrid ops)")
    return f"{head}: its weights take {total:,} bytes; {_graph_share(plan, device, size - total)}"


def _graph_share(plan: Plan, device: DeviceModel, rest: int) -> str:
    """What the bytes that are not weights are: the graph's ops, their constants and quantization parameters."""
    try:
        ops = get_route(plan.target.route).inspect(device.path).get("ops") or {}
    except (NotImplementedError, EdgekitError, OSError, ValueError):  # a note, never a failure
        ops = {}
    count = sum(ops.values())
    if count < 1000:
        return (f"the other {rest:,} bytes are graph and quantization parameters, which a model this small does not "
                "amortize")
    most = ", ".join(f"{name} {n:,}" for name, n in sorted(ops.items(), key=lambda kv: -kv[1])[:3])
    return (f"the other {rest:,} bytes are the graph itself, {count:,} ops (most: {most}), with their constants and "
            "quantization parameters: a recurrence unrolled over its time steps repeats them at every step, and INT8 "
            "adds a QUANTIZE op and parameters to each; a float or dynamic-range target, or fewer time steps, keeps it "
            "smaller")
