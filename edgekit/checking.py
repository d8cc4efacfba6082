"""`edgekit check`: re-run a bundle's drift check on its golden I/O, or on new eval data against reference.onnx."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit import bundle_check
from edgekit.data import load_data, validate_against
from edgekit.drift import Thresholds, drift_block
from edgekit.errors import ConfigError, DataError
from edgekit.model import onnx_value_spec
from edgekit.runners.onnxrt import OnnxRunner


def _read_bundle(bundle: Path) -> tuple[dict, dict]:
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
        report = json.loads((bundle / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{bundle} is not an edgekit bundle: {exc}",
                          hint="give the folder that `edgekit build` wrote (it holds manifest.json)") from exc
    return manifest, report


def check_bundle_dir(bundle: Path, eval_data: Any = None, recipe: Path | str | None = None,
                     emulator: str = "host") -> dict:
    """The golden check (always) plus, with eval data, a fresh drift measurement against reference.onnx."""
    manifest, report = _read_bundle(bundle)
    if emulator == "arm64":
        from edgekit.emulated import check_golden_in_emulator

        result = check_golden_in_emulator(bundle, manifest)
    else:
        try:
            result = bundle_check.check_bundle(bundle)
        except bundle_check.CheckError as exc:
            raise DataError(str(exc), hint="rebuild the bundle with `edgekit build`") from exc
    result["where"] = "host" if emulator == "host" else result.get("where", "arm64")
    if eval_data is not None:
        result["drift"] = _drift_on(bundle, manifest, report, eval_data, recipe)
        result["passed"] = result["passed"] and result["drift"]["passed"]
    return result


def _drift_on(bundle: Path, manifest: dict, report: dict, eval_data: Any, recipe: Path | str | None) -> dict:
    import onnx

    graph = onnx.load(str(bundle / "reference.onnx")).graph
    initializers = {i.name for i in graph.initializer}
    specs = tuple(onnx_value_spec(v) for v in graph.input if v.name not in initializers)
    data = validate_against(load_data(eval_data, recipe, "eval data"), specs, "eval data")
    with OnnxRunner(bundle / "reference.onnx") as runner:
        reference = runner.run(data.inputs)
    device = manifest["device"]
    outputs, _ = bundle_check.run_device(bundle / device["model"], device, data.inputs, "auto")
    t = report["drift"]["thresholds"]
    thresholds = Thresholds(t["max_drop"], t["min_agreement"], t.get("min_sqnr_db", 20.0))
    return drift_block(reference, outputs, data.labels, device["tolerances"].get("class_output"), thresholds)


def result_lines(result: dict) -> list[str]:
    lines = [f"golden check: {result['samples']} samples on {result['runtime']} ({result['where']})"]
    if not result["model_sha256_matches"]:
        lines.append("  model file differs from the one this bundle was built and measured with (sha256 mismatch)")
    for row in result["outputs"]:
        error = "n/a" if row["max_abs_err_vs_golden"] is None else f"{row['max_abs_err_vs_golden']:.3g}"
        lines.append(f"  {row['name']}: max|err| vs golden {error} (tolerance {row['atol']:.3g}) "
                     f"{'ok' if row['passed'] else 'DRIFT'}")
    drift = result.get("drift")
    if drift:
        from edgekit.report import output_rows

        if drift["reference_accuracy"] is not None:
            lines.append(f"eval: reference accuracy {drift['reference_accuracy']:.4f}, device "
                         f"{drift['device_accuracy']:.4f}, drop {drift['accuracy_drop']:.2f} points")
        if drift["top1_agreement"] is not None:
            lines.append(f"eval: top-1 agreement {drift['top1_agreement']:.4f} over {drift['samples']} samples")
        lines += output_rows("total drift", drift["outputs"])
    lines.append("PASSED" if result["passed"] else "FAILED: drift over threshold")
    return lines
