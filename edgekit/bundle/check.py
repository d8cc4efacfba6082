"""`edgekit check`: re-run a bundle's drift check on its golden I/O, or on new eval data against reference.onnx.

A bundle is data from someone else: `open_bundle` reads it with check.py's own verification (paths stay inside,
npz never unpickled, every sha256 compared before anything runs) and validates report.json against its schema.
check, diff and inspect all open bundles through it; none of them runs code from the bundle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.config.options import Gate
from edgekit.errors import ConfigError, IntegrityError
from edgekit.inputs.data import load_data, validate_against
from edgekit.inputs.model import onnx_value_spec
from edgekit.measure.detect import Detector
from edgekit.measure.drift import drift_block
from edgekit.runners.onnxrt import OnnxRunner
from edgekit.standalone import check as check_script
from edgekit.utils.quiet import quiet_runtimes

REPORT = "report.json"
BUNDLE_HINT = "rebuild the bundle with `edgekit build`, or give the folder `edgekit build` wrote"


@dataclass(frozen=True)
class OpenedBundle:
    """A verified bundle: its folder, manifest, report and golden data (see check_script.Verified)."""

    path: Path
    verified: check_script.Verified
    report: dict

    @property
    def manifest(self) -> dict:
        return self.verified.manifest


def open_bundle(folder: Path, expect_digest: str | None = None) -> OpenedBundle:
    """Read and verify a bundle: ConfigError (exit 2) naming the file and key of anything malformed or missing,
    IntegrityError (exit 3) for a file that differs from manifest.json or a manifest that differs from
    `expect_digest`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a bundle folder", hint=BUNDLE_HINT)
    reports: list[dict] = []
    try:
        verified = check_script.verify_bundle(folder, expect_digest=expect_digest,
                                              also=lambda manifest: reports.append(read_report(folder, manifest)))
    except check_script.CheckError as exc:
        raise ConfigError(f"{folder}: {exc}", hint=BUNDLE_HINT) from None
    except check_script.TamperedError as exc:
        raise IntegrityError(f"{folder}: {exc}", hint="rebuild it, or get the bundle again from its source; "
                             "`edgekit check --expect-digest` pins manifest.json itself") from None
    return OpenedBundle(folder, verified, reports[0])


def read_report(folder: Path, manifest: dict) -> dict:
    """report.json parsed and validated against the edgekit.report/1 schema (CheckError naming the key)."""
    from edgekit.bundle.report import SCHEMA_ID, report_schema

    if REPORT not in manifest["files"]:
        raise check_script.CheckError(f"manifest.json: files has no sha256 for {REPORT}")
    path = check_script.bundle_file(folder, REPORT, f"files.{REPORT}")
    try:
        report = json.loads(path.read_bytes())
    except ValueError as exc:
        raise check_script.CheckError(f"{REPORT} is not valid JSON: {exc}") from None
    except RecursionError:
        raise check_script.CheckError(f"{REPORT} nests deeper than any report: refused") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA_ID:
        raise check_script.CheckError(f"{REPORT} is not an {SCHEMA_ID} report (key schema)")
    import jsonschema

    schema = report_schema()
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(report))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise check_script.CheckError(f"{REPORT}: key {key}: {error.message[:200]}")
    return report


def check_bundle_dir(bundle: Path, eval_data: Any = None, recipe: Path | str | None = None,
                     emulator: str = "host", expect_digest: str | None = None) -> dict:
    """The golden check (always) plus, with eval data, a fresh drift measurement against reference.onnx."""
    opened = open_bundle(bundle, expect_digest)
    if emulator == "arm64":
        from edgekit.emulator.drift import check_golden_in_emulator

        result = check_golden_in_emulator(opened.verified)
    else:
        result = _golden_on_host(opened.verified)
    result["where"] = "host" if emulator == "host" else result.get("where", "arm64")
    if eval_data is not None:
        result["drift"] = _drift_on(opened, eval_data, recipe)
        result["passed"] = result["passed"] and result["drift"]["passed"]
    return result


def _golden_on_host(verified: check_script.Verified) -> dict:
    device = verified.manifest["device"]
    outputs, runtime = _run(verified.model, device, verified.inputs)
    result = check_script.compare(verified.golden, outputs, device["tolerances"])
    result.update({"model": str(verified.model), "runtime": runtime, "model_sha256_matches": True,
                   "samples": len(next(iter(verified.inputs.values())))})
    return result


def _run(model: Path, device: dict, inputs: dict) -> tuple[dict, str]:
    """The device model on the host (a Jetson model in onnxruntime: edgekit never runs the bundle's scripts)."""
    try:
        with quiet_runtimes():
            return check_script.run_device(model, device, inputs, "auto")
    except check_script.CheckError as exc:
        raise ConfigError(str(exc), hint=BUNDLE_HINT) from None
    except Exception as exc:  # the runtime's own words for a model it cannot load or run
        raise ConfigError(f"{model.name} does not run: {type(exc).__name__}: {str(exc).strip()[:200]}",
                          hint=BUNDLE_HINT) from None


def _drift_on(opened: OpenedBundle, eval_data: Any, recipe: Path | str | None) -> dict:
    import onnx

    device = opened.manifest["device"]
    if "reference.onnx" not in opened.manifest["files"]:
        raise ConfigError(f"{opened.path}: manifest.json: files has no sha256 for reference.onnx",
                          hint="--eval recomputes references from reference.onnx; rebuild the bundle")
    reference_path = opened.path / "reference.onnx"  # verified present and unmodified by open_bundle
    graph = onnx.load(str(reference_path)).graph
    initializers = {i.name for i in graph.initializer}
    specs = tuple(onnx_value_spec(v) for v in graph.input if v.name not in initializers)
    data = validate_against(load_data(eval_data, recipe, "eval data"), specs, "eval data")
    with OnnxRunner(reference_path) as runner:
        reference = runner.run(data.inputs)
    outputs, _ = _run(opened.verified.model, device, data.inputs)
    t = opened.report["drift"]["thresholds"]
    gate = Gate(t["max_drop"], t["min_agreement"], t.get("min_sqnr_db", 20.0), t.get("min_recall"),
                t.get("min_precision"))
    config = opened.manifest.get("config")
    ignore = ((config or {}).get("options") or {}).get("ignore_index") if isinstance(config, dict) else None
    ignore = ignore if type(ignore) is int else None  # the manifest is data: an int or nothing
    tasks = device["tolerances"].get("tasks")
    tasks = tasks if isinstance(tasks, dict) else device["tolerances"].get("class_output")  # older manifests
    return drift_block(reference, outputs, data.labels, tasks, gate, ignore, _detectors(device["tolerances"]),
                       data.boxes)


def _detectors(tolerances: dict) -> tuple[Detector, ...]:
    """How the build read its detect outputs (manifest.json is data: a malformed entry is refused)."""
    raw = tolerances.get("detectors") or []
    try:
        if not isinstance(raw, list) or not all(isinstance(entry, dict) for entry in raw):
            raise ValueError("not a list of detector readings")
        return tuple(Detector.from_dict(entry) for entry in raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"manifest.json: device.tolerances.detectors is malformed: {exc}",
                          hint="rebuild the bundle") from None


def result_lines(result: dict) -> list[str]:
    lines = [f"golden check: {result['samples']} samples on {result['runtime']} ({result['where']})"]
    for row in result["outputs"]:
        error = "n/a" if row["max_abs_err_vs_golden"] is None else f"{row['max_abs_err_vs_golden']:.3g}"
        lines.append(f"  {row['name']}: max|err| vs golden {error} (tolerance {row['atol']:.3g}) "
                     f"{'ok' if row['passed'] else 'DRIFT'}")
    drift = result.get("drift")
    if drift:
        from edgekit.bundle.report import output_rows, task_lines

        if drift["reference_accuracy"] is not None:
            lines.append(f"eval: reference accuracy {drift['reference_accuracy']:.4f}, device "
                         f"{drift['device_accuracy']:.4f}, drop {drift['accuracy_drop']:.2f} points")
        if drift["top1_agreement"] is not None:
            lines.append(f"eval: top-1 agreement {drift['top1_agreement']:.4f} over {drift['samples']} samples")
        lines += output_rows("total drift", drift["outputs"])
        lines += [line for row in drift["outputs"] for line in task_lines(row)]
    lines.append("PASSED" if result["passed"] else "FAILED: drift over threshold")
    return lines
