"""The bundle folder: device model, reference.onnx, golden I/O, check.py, manifest and reports; written atomically."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgekit.bundle import lineage
from edgekit.bundle.report import make_report, validate_report
from edgekit.bundle.report_html import Evidence, render_html
from edgekit.inputs.plan import Plan
from edgekit.measure.measured import Measured
from edgekit.measure.size import gzip_bytes, gzip_size
from edgekit.measure.tasks import Reading, scores_output
from edgekit.routes.device import DeviceModel, tolerances
from edgekit.standalone import check as check_script
from edgekit.standalone import monitor
from edgekit.transform.export import OnnxExport

EVIDENCE_PIXELS = 100_000  # per-pixel labels: pixels report.html's confusion matrices are drawn from


@dataclass(frozen=True)
class Written:
    report: dict
    manifest: dict
    manifest_sha256: str


def write(staging: Path, plan: Plan, export: OnnxExport, device: DeviceModel, measured: Measured,
          timings_s: dict[str, float], reading: Reading) -> Written:
    """Fill the staging folder; nothing here touches the final OUT."""
    shutil.copyfile(device.path, staging / device.bundle_name)
    shutil.copyfile(export.path, staging / "reference.onnx")
    for name, path in device.extra_files.items():
        shutil.copyfile(path, staging / name)
        if name.endswith((".sh", ".py")):
            (staging / name).chmod(0o755)  # build_engine.sh / .py are run directly on the device
    golden = _write_golden(staging, plan, measured)
    shutil.copyfile(check_script.__file__, staging / "check.py")
    (staging / "check.py").chmod(0o755)
    shutil.copyfile(monitor.__file__, staging / "monitor.py")  # input-drift monitor, scored against data_stats.json
    (staging / "data_stats.json").write_text(json.dumps(monitor.data_stats(plan.calibration.inputs)) + "\n")
    sizes = _sizes([staging / name for name in (device.bundle_name, *device.model_files)], device,
                   measured.baseline_float_gzip_bytes)
    report = make_report(plan, device, measured, timings_s, sizes)
    validate_report(report)
    (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    manifest = _manifest(plan, export, device, golden, reading)
    manifest["step_cache"] = list(measured.cache_entries)  # what came from $EDGEKIT_STEP_CACHE, verified by sha256
    scores = scores_output(reading.tasks)
    evidence = _evidence(measured, plan.evaluation.labels, scores, plan.options.data.ignore_index)
    evidence = replace(evidence, detectors=reading.detectors, images=_images(plan) if reading.detectors else None)
    (staging / "report.html").write_text(render_html(report, manifest, evidence))
    manifest["files"] = lineage.file_hashes(staging)
    text = json.dumps(manifest, indent=2) + "\n"
    (staging / "manifest.json").write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    (staging / "manifest.sha256").write_text(f"{digest}  manifest.json\n")  # `sha256sum -c manifest.sha256`
    return Written(report, manifest, digest)


def _images(plan: Plan) -> np.ndarray | None:
    """The eval inputs, for report.html to draw detections on (a few of them), when the model takes one image."""
    inputs = list(plan.evaluation.inputs.values())
    if len(inputs) != 1 or inputs[0].ndim != 4 or inputs[0].shape[1] not in (1, 3):
        return None
    return inputs[0]


def _evidence(measured: Measured, labels: np.ndarray | None, scores: str | None, ignore: int | None) -> Evidence:
    """What report.html plots; samples with the ignore label are left out of its confusion matrices. With
    per-pixel labels the class scores become one row per labelled pixel (at most EVIDENCE_PIXELS, evenly spaced)."""
    if labels is not None and labels.ndim > 1 and scores in measured.reference:
        keep = np.flatnonzero(labels != ignore) if ignore is not None else np.arange(labels.size)
        keep = keep[:: max(1, len(keep) // EVIDENCE_PIXELS)]

        def pixels(values: np.ndarray) -> np.ndarray:
            return np.moveaxis(values, 1, -1).reshape(-1, values.shape[1])[keep]

        return Evidence({**measured.reference, scores: pixels(measured.reference[scores])},
                        {**measured.device, scores: pixels(measured.device[scores])}, labels.ravel()[keep], scores,
                        "labelled pixels")
    if labels is None or ignore is None:
        return Evidence(measured.reference, measured.device, labels, scores)
    keep = labels != ignore
    return Evidence({k: v[keep] for k, v in measured.reference.items()},
                    {k: v[keep] for k, v in measured.device.items()}, labels[keep], scores)


def _sizes(device_files: list[Path], device: DeviceModel, baseline_gzip: int | None) -> dict:
    """Sizes (a device model in several files counts them all); the baseline is the float device model of the
    original model (the same one unless compressing)."""
    float_bytes = device.float_path.stat().st_size if device.float_path else None
    float_gzip = gzip_size(device.float_path) if device.float_path else None
    data = b"".join(path.read_bytes() for path in device_files)
    return {"baseline_float_gzip_bytes": baseline_gzip or float_gzip, "float_device_bytes": float_bytes,
            "float_device_gzip_bytes": float_gzip, "device_bytes": len(data),
            "device_gzip_bytes": gzip_bytes(data)}


def _write_golden(staging: Path, plan: Plan, measured: Measured) -> dict[str, np.ndarray]:
    count = min(plan.options.verify.golden_samples, plan.evaluation.size)
    (staging / "golden").mkdir()
    np.savez(staging / "golden" / "inputs.npz", **{k: v[:count] for k, v in plan.evaluation.inputs.items()})
    outputs = {f"reference/{k}": v[:count] for k, v in measured.reference.items()}
    outputs.update({f"device/{k}": v[:count] for k, v in measured.device.items()})
    np.savez(staging / "golden" / "outputs.npz", **outputs)
    return {k: v[:count] for k, v in measured.device.items()}


def _manifest(plan: Plan, export: OnnxExport, device: DeviceModel, golden: dict[str, np.ndarray],
              reading: Reading) -> dict:
    config = {"target": plan.target.name, "options": plan.options.to_dict(), "io": plan.io}
    return {
        "schema": lineage.MANIFEST_SCHEMA, "created": lineage.now_utc(), "git_sha": lineage.git_sha(),
        "seed": plan.options.seed, "config": config, "config_sha256": lineage.config_digest(config),
        "target": {**plan.target.summary(), "cpu": plan.target.cpu},
        "model": {"name": plan.model.name, "kind": plan.model.kind, "source": plan.model.source,
                  "sha256": plan.model.sha256, "exporter": export.exporter},
        "data": {"calibration": _data_entry(plan.calibration), "eval": {**_data_entry(plan.evaluation),
                                                                       "kind": plan.eval_source}},
        "versions": lineage.package_versions(),
        "device": {
            "model": device.bundle_name, "runtime": device.runtime["name"], "precision": plan.target.precision,
            "io": plan.io, **device.bindings,
            "signature": _signature(plan, export, device),
            "tolerances": {"atol": tolerances(device, plan.target.precision, golden),
                           "class_output": scores_output(reading.tasks), **reading.manifest()},
        },
    }


def _data_entry(data) -> dict:
    return {"source": data.source, "sha256": data.sha256, "file_sha256": data.file_sha256, "samples": data.size,
            "labels": data.labels is not None}


def _signature(plan: Plan, export: OnnxExport, device: DeviceModel) -> dict:
    """The device I/O a caller must provide: model-layout names and shapes, device layout, dtype, int8 params."""
    inputs = {b["model_name"]: b for b in device.bindings["inputs"]}
    outputs = {b["model_name"]: b for b in device.bindings["outputs"]}
    return {
        "inputs": [{**spec.to_dict(), "layout": "NCHW" if len(spec.shape) == 4 else None,
                    "device_layout": (None if len(spec.shape) != 4 else "NHWC" if inputs[spec.name]["to_device"]
                                      else "NCHW"),  # litert-torch and TensorRT keep NCHW
                    "device_dtype": inputs[spec.name]["dtype"], "scale": inputs[spec.name]["scale"],
                    "zero_point": inputs[spec.name]["zero_point"],
                    "normalisation": _normalisation(plan.recipe)}
                   for spec in plan.inputs],
        "outputs": [{**spec.to_dict(), "device_name": outputs[spec.name]["device_name"],
                     "device_dtype": outputs[spec.name]["dtype"], "scale": outputs[spec.name]["scale"],
                     "zero_point": outputs[spec.name]["zero_point"]} for spec in export.outputs],
    }


def _normalisation(recipe: str | None) -> dict | str:
    """What the device input expects: the image recipe edgekit applied, or the data's own normalisation."""
    if recipe is None:
        return "as in the calibration data (edgekit applies none to array data)"
    from edgekit.inputs.images import Recipe

    loaded = Recipe.from_toml(recipe)
    return {"recipe": Path(recipe).name, "size": list(loaded.size), "scale": loaded.scale, "mean": list(loaded.mean),
            "std": list(loaded.std), "colour": loaded.colour, "formula": "(pixel / scale - mean) / std"}
