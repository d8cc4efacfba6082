"""The Python API: build() and check(), the same code the CLI runs."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import bundle as bundle_io
from edgekit import outdir
from edgekit.build_compression import baseline_float_gzip, compress_model, device_columns
from edgekit.config import LAYER_PRECISION, BuildOptions, Calibration, Cluster, Fallback, Prune
from edgekit.device import DeviceModel
from edgekit.drift import Thresholds, drift_block, failure_reasons, output_metrics
from edgekit.errors import DriftError, EdgekitError, UnsupportedError
from edgekit.fallback import Bounds, run_fallback
from edgekit.model import LoadedModel
from edgekit.plan import Plan, make_plan
from edgekit.progress import Listener, Steps
from edgekit.report import passed as report_passed
from edgekit.runners.reference import reference_runner
from edgekit.shared_steps import exported, reference_outputs
from edgekit.steps.equalize import check_request as check_equalize
from edgekit.steps.equalize import equalize_applies, equalize_model
from edgekit.steps.export_onnx import OnnxExport
from edgekit.tasks import output_tasks

LAYER_SAMPLES = 32


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: the bundle folder, the report (same dict as report.json) and the verdict."""

    out: Path
    report: dict
    manifest: dict
    manifest_sha256: str  # pin it: `edgekit check OUT --expect-digest SHA256` refuses any other manifest.json

    @property
    def passed(self) -> bool:
        return report_passed(self.report)

    def raise_for_drift(self) -> None:
        if not self.passed:
            reasons = failure_reasons(self.report["drift"]) or ["the emulator run failed"]
            raise DriftError(f"drift over threshold: {'; '.join(reasons)}", report=self.report,
                             hint=f"see {self.out / 'report.html'}")


def build(model: Any, target: str = "android-arm64-int8", calibration: Any = None, eval_data: Any = None,
          out: str | Path | None = None, *, recipe: str | Path | None = None, prune: Prune | None = None,
          cluster: Cluster | None = None, recover: int = 0, calibration_method: str | Calibration = "minmax",
          max_drop: float = 1.0, min_agreement: float = 0.99, fallback: str | Fallback = "none", equalize: str = "auto",
          converter: str | None = None, emulator: str | None = None, emulator_samples: int = 64,
          emulator_seconds: float = 60.0, input_shape: tuple[int, ...] | None = None, io: str | None = None,
          seed: int = 0, force: bool = False, progress: Listener | None = None,
          accept_conversion_error: bool = False, ignore_index: int | None = None,
          allow_small_calibration: bool = False, task: str | None = None,
          outputs: dict[str, str] | str | Path | None = None, min_sqnr: float | None = None) -> BuildResult:
    """Build a device bundle for `target` and measure its drift; see docs/design.md for every argument.
    `accept_conversion_error`: ship a float32 conversion wrong beyond rounding (else exit 2), with a warning."""
    method = calibration_method if isinstance(calibration_method, Calibration) else Calibration(calibration_method)
    ladder = fallback if isinstance(fallback, Fallback) else Fallback(fallback)
    options = BuildOptions(max_drop=max_drop, min_agreement=min_agreement, calibration=method, prune=prune,
                           cluster=cluster, recover=recover, fallback=ladder.mode, ladder=ladder, equalize=equalize,
                           converter=converter, emulator=emulator, emulator_samples=emulator_samples,
                           emulator_seconds=emulator_seconds, io=io, seed=seed,
                           accept_conversion_error=accept_conversion_error, ignore_index=ignore_index,
                           allow_small_calibration=allow_small_calibration, task=task,
                           outputs=_outputs_option(outputs), min_sqnr=min_sqnr)
    _refuse_unimplemented(options)
    steps = Steps(progress)
    with steps.step("plan", "checking model, data and target"):
        plan = make_plan(model, target, calibration, eval_data, out, options, recipe, input_shape, force)
        plan.route.check(plan)
        check_equalize(plan)
    for note in plan.warnings:
        steps.note(note)
    try:
        result = _build_in_place(plan, steps)
    except OSError as exc:
        if exc.errno not in outdir.USER_ERRNOS:
            raise
        raise outdir.user_os_error(exc, f"cannot write the bundle for {plan.out}") from None
    return BuildResult(plan.out, result.report, result.manifest, result.manifest_sha256)


def _build_in_place(plan: Plan, steps: Steps) -> bundle_io.Written:
    """Under OUT's lock: clear what killed builds left, build into staging, publish; nothing half written remains
    on any failure or signal (staging and work folder removed, OUT untouched)."""
    created = outdir.make_parents(plan.out)
    try:
        with outdir.out_lock(plan.out):
            outdir.sweep_for(plan.out)
            staging = outdir.make_staging(plan.out)
            workdir = outdir.make_workdir()
            try:
                result = _run(plan, staging, workdir, steps)
                outdir.publish(staging, plan.out, replace=plan.force)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    except BaseException:
        outdir.remove_empty(created)  # the folders this build made for OUT, when nothing else is in them
        raise
    return result


def _outputs_option(outputs: dict[str, str] | str | Path | None) -> dict[str, str] | None:
    """`outputs`: a dict, or the path of an --outputs TOML file."""
    from edgekit.tasks import load_outputs_file

    return load_outputs_file(outputs) if isinstance(outputs, (str, Path)) else outputs


def _refuse_unimplemented(options: BuildOptions) -> None:
    """Options that would otherwise be silently ignored stop the build (exit 2)."""
    if options.recover and options.prune is None and options.cluster is None:
        raise UnsupportedError("--recover fine-tunes after compression, but neither --prune nor --clusters is given",
                               hint="add --prune and/or --clusters, or drop --recover")


def _run(plan: Plan, staging: Path, workdir: Path, steps: Steps) -> bundle_io.Written:
    device_plan, compression, equalization = plan, None, None
    if equalize_applies(plan):  # before compression: its per-channel scaling would undo clustered values
        with steps.step("equalize", "cross-layer equalization of consecutive layers"):
            equalized = equalize_model(device_plan, workdir)
            device_plan = replace(device_plan, model=equalized.model)
            equalization = equalized
    if plan.options.prune is not None or plan.options.cluster is not None:
        with steps.step("compress", "compressing the PyTorch model"):
            compressed, compression = compress_model(device_plan, workdir)
            device_plan = replace(device_plan, model=compressed)
    with steps.step("export", "exporting to ONNX"):
        export, export_reused = exported(device_plan.model, plan.inputs, workdir / "reference.onnx")
        tasks, notes = output_tasks({o.name: o.shape for o in export.outputs}, plan.evaluation.labels,
                                    plan.options.task, plan.options.outputs)
    for note in notes:
        steps.note(note)
        plan.warnings.append(note)
    with steps.step("convert", f"converting for {plan.target.name}"):
        device = plan.route.build(device_plan, export, workdir)
    with steps.step("verify", f"measuring drift on {plan.evaluation.size} {plan.eval_source} samples"):
        measured = _evaluate(plan, export, device, device_plan, tasks)
    if compression is not None:
        with steps.step("preservation", "checking sparsity and clusters in the device model"):
            measured = _with_compression(plan, device_plan, device, measured, compression, workdir)
    if plan.options.fallback == "auto" and not measured.drift["passed"]:
        ladder = plan.options.ladder
        bounds = Bounds(ladder.max_size, ladder.max_latency_ratio, ladder.max_float_layers)
        with steps.step("fallback", f"moving the most sensitive layers up the ladder "
                                    f"({', '.join(plan.route.ladder(plan.target))})"):
            device, measured = run_fallback(plan.route, plan.target, device, measured,
                                            lambda candidate: _evaluate(plan, export, candidate, device_plan, tasks),
                                            bounds, lambda rows: _sensitivity(export, rows, plan),
                                            lambda candidate: _measure(plan, export, candidate, device_plan, tasks))
    if plan.emulator == "arm64":
        count = min(plan.options.emulator_samples, plan.evaluation.size)
        with steps.step("emulator", f"running up to {count} samples in the ARM64 emulator ({plan.target.cpu}, "
                                    f"budget {plan.options.emulator_seconds:g} s)"):
            measured = _measure_emulated(plan, device, measured, count, tasks)
    if equalization is not None:
        notes = [equalization.note] if equalization.note else []
        measured = replace(measured, equalization=equalization.block, warnings=[*measured.warnings, *notes])
    reused = ["export"] * export_reused + ["conversion"] * bool(device.conversion.get("reused"))
    measured = replace(measured, reused=tuple(sorted({*reused, *device.reused, *measured.reused})))
    with steps.step("bundle", "writing the bundle"):
        return bundle_io.write(staging, plan, export, device, measured, steps.timings_s, tasks)


def _with_compression(plan: Plan, device_plan: Plan, device: DeviceModel, measured: bundle_io.Measured,
                      block: dict, workdir: Path) -> bundle_io.Measured:
    block, notes = device_columns(block, device.path, plan.target.format, device_plan.model)
    unmatched = [f"compression rule matched no layer: {rule}" for rule in block.get("unmatched_rules", [])]
    return replace(measured, compression=block, warnings=[*measured.warnings, *notes, *unmatched],
                   baseline_float_gzip_bytes=baseline_float_gzip(plan, workdir))


def _evaluate(plan: Plan, export: OnnxExport, device: DeviceModel, device_plan: Plan,
              tasks: dict[str, str]) -> bundle_io.Measured:
    """Drift on the eval data, plus per-layer drift where the route can measure it."""
    measured = _measure(plan, export, device, device_plan, tasks)
    if device.per_layer is None:
        return measured
    from edgekit.layers import activation_bytes, layer_samples

    count = layer_samples(export.path, min(LAYER_SAMPLES, plan.evaluation.size))
    samples = {k: v[:count] for k, v in plan.evaluation.inputs.items()}
    default = LAYER_PRECISION.get(plan.target.precision, "int8")
    rows = [{"precision": default, "chosen_because": f"{default.upper()} by default", **row}
            for row in device.per_layer(samples)]
    notes = [] if count >= min(LAYER_SAMPLES, plan.evaluation.size) else [
        f"per-layer drift on {count} samples: the model's activations take "
        f"{activation_bytes(export.path) / 1e6:.0f} MB a sample"]
    return replace(measured, layers=rows, warnings=[*measured.warnings, *notes])


def _sensitivity(export: OnnxExport, rows: list[dict], plan: Plan) -> dict[str, float]:
    """Each quantized activation's effect on the output alone (edgekit/sensitivity.py), on eval samples."""
    from edgekit.sensitivity import layer_sensitivity

    return layer_sensitivity(export.path, rows, plan.evaluation.inputs)


def _thresholds(plan: Plan) -> Thresholds:
    floor = plan.options.min_sqnr if plan.options.min_sqnr is not None else plan.target.min_sqnr_db
    return Thresholds(plan.options.max_drop, plan.options.min_agreement, floor)


def _measure(plan: Plan, export: OnnxExport, device: DeviceModel, device_plan: Plan,
             tasks: dict[str, str]) -> bundle_io.Measured:
    """Drift against the original model; the converter's error against the model that was converted (the
    compressed one, when compressing), so compression, conversion and quantization errors stay apart."""
    data = plan.evaluation
    reference, reused = _reference(plan, export)
    converted = reference
    if not _same_weights(plan.model, device_plan.model):  # compressed or equalized: run those weights too
        converted, _ = _reference(device_plan, export)
    with device.open_float_runner() as runner:
        floats = runner.run(data.inputs)
    with device.open_runner(device.path) as runner:
        outputs = runner.run(data.inputs)
        latency = runner.median_latency_ms()
    drift = drift_block(reference, outputs, data.labels, tasks, _thresholds(plan), plan.options.ignore_index)
    quantized = plan.target.precision != "fp32"
    return bundle_io.Measured(
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


def _measure_emulated(plan: Plan, device: DeviceModel, measured: bundle_io.Measured, count: int,
                      tasks: dict[str, str]) -> bundle_io.Measured:
    from edgekit.emulator_drift import measure

    inputs = {k: v[:count] for k, v in plan.evaluation.inputs.items()}
    block = measure(device.path, device.bindings, inputs, measured.reference, measured.device, tasks,
                    _thresholds(plan), plan.target.cpu, plan.options.emulator_seconds)
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
    if any(not np.all(np.isfinite(v)) for v in reference.values()):
        notes.append("the reference model itself produces NaN/inf on the eval data")
    return notes


def check(bundle: str | Path, eval_data: Any = None, recipe: str | Path | None = None,
          expect_digest: str | None = None) -> dict:
    """Re-run the drift check of a bundle: golden I/O, or with `eval_data`, references recomputed from
    reference.onnx. `expect_digest`: the sha256 of manifest.json the bundle must have (IntegrityError otherwise)."""
    from edgekit.checking import check_bundle_dir

    return check_bundle_dir(Path(bundle), eval_data, recipe, expect_digest=expect_digest)


__all__ = ["BuildResult", "EdgekitError", "build", "check"]
