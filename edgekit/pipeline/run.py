"""One build, stage by stage, under OUT's lock: equalize, compress, export, convert, verify, fall back, emulate,
write the bundle; staging is published only when a bundle was written, and removed on any failure."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from edgekit.bundle import write as bundle_io
from edgekit.cache import store as step_cache
from edgekit.inputs.plan import Plan
from edgekit.measure.measured import Measured
from edgekit.measure.tasks import Reading, detectors, embed_by_values, output_tasks
from edgekit.pipeline.compress import baseline_float_gzip, compress_model, device_columns
from edgekit.pipeline.fallback import Bounds, run_fallback
from edgekit.pipeline.qat import fine_tuned, qat_block, qat_rung, qat_warnings
from edgekit.pipeline.verify import evaluate, measure, measure_emulated, references, sensitivity, size_note
from edgekit.routes import get_route
from edgekit.routes.device import DeviceModel, check_io
from edgekit.transform.equalize.step import equalize_applies, equalize_model
from edgekit.transform.export import OnnxExport, exported
from edgekit.utils import outdir
from edgekit.utils.progress import Steps


def build_in_place(plan: Plan, steps: Steps) -> bundle_io.Written:
    """Under OUT's lock: clear what killed builds left, build into staging, publish; nothing half written remains
    on any failure or signal (staging and work folder removed, OUT untouched)."""
    created = outdir.make_parents(plan.out)
    try:
        with outdir.out_lock(plan.out):
            outdir.sweep_for(plan.out)
            staging = outdir.make_staging(plan.out)
            workdir = outdir.make_workdir()
            taken = step_cache.TAKEN.set([])  # the step cache entries this build takes, for its manifest
            try:
                result = _run(plan, staging, workdir, steps)
                outdir.publish(staging, plan.out, replace=plan.force)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            finally:
                step_cache.TAKEN.reset(taken)
                shutil.rmtree(workdir, ignore_errors=True)
    except BaseException:
        outdir.remove_empty(created)  # the folders this build made for OUT, when nothing else is in them
        raise
    return result


def _run(plan: Plan, staging: Path, workdir: Path, steps: Steps) -> bundle_io.Written:
    route = get_route(plan.target.route)
    device_plan, compression, equalization = plan, None, None
    if equalize_applies(plan):  # before compression: its per-channel scaling would undo clustered values
        with steps.step("equalize", "cross-layer equalization of consecutive layers"):
            equalized = equalize_model(device_plan, workdir)
            device_plan = replace(device_plan, model=equalized.model)
            equalization = equalized
    if plan.options.compression.prune is not None or plan.options.compression.cluster is not None:
        with steps.step("compress", "compressing the PyTorch model"):
            compressed, compression = compress_model(device_plan, workdir)
            device_plan = replace(device_plan, model=compressed)
    fine = None
    if plan.options.qat.enabled and plan.options.qat.steps != "auto":
        with steps.step("qat", f"quantization-aware fine-tuning, at most {plan.options.qat.budget()} steps"):
            fine = fine_tuned(device_plan, steps.note)
            device_plan = replace(device_plan, model=fine.model, fine_tuned=True)
    with steps.step("export", "exporting to ONNX"):
        export, export_reused = exported(device_plan.model, plan.inputs, workdir / "reference.onnx")
    with steps.step("reference", f"running the original model on {plan.evaluation.size} eval samples"):
        known = references(plan, export, device_plan)
        reading, notes = read_outputs(plan, export, known.original)
    for note in notes:
        steps.note(note)
        plan.warnings.append(note)
    with steps.step("convert", f"converting for {plan.target.name}"):
        device = route.build(device_plan, export, workdir)
        check_io(device, plan.io)
    with steps.step("verify", f"measuring drift on {plan.evaluation.size} {plan.eval_source} samples"):
        measured = evaluate(plan, export, device, device_plan, reading, known)
    if compression is not None:
        with steps.step("preservation", "checking sparsity and clusters in the device model"):
            measured = _with_compression(plan, device_plan, device, measured, compression, workdir)
    if plan.options.fallback.mode == "auto" and not measured.drift["passed"]:
        ladder = plan.options.fallback
        bounds = Bounds(ladder.max_size, ladder.max_latency_ratio, ladder.max_float_layers)
        with steps.step("fallback", f"moving the most sensitive layers up the ladder "
                                    f"({', '.join(route.ladder(plan.target))})"):
            device, measured = run_fallback(route, plan.target, device, measured,
                                            lambda candidate: evaluate(plan, export, candidate, device_plan,
                                                                       reading, known),
                                            bounds, lambda groups: sensitivity(export, groups, plan),
                                            lambda candidate: measure(plan, export, candidate, device_plan,
                                                                      reading, known))
        if plan.options.qat.steps == "auto" and not measured.drift["passed"]:
            with steps.step("qat", f"quantization-aware fine-tuning, the last rung ({plan.options.qat.budget()} "
                                   "steps)"):
                device, measured = qat_rung(plan, device_plan, device, measured, reading, workdir, steps.note)
    note = size_note(plan, device)
    if note is not None:
        measured = replace(measured, warnings=[*measured.warnings, note])
    if plan.emulator == "arm64":
        count = min(plan.options.verify.emulator_samples, plan.evaluation.size)
        with steps.step("emulator", f"running up to {count} samples in the ARM64 emulator ({plan.target.cpu}, "
                                    f"budget {plan.options.verify.emulator_seconds:g} s)"):
            measured = measure_emulated(plan, device, measured, count, reading)
    if fine is not None:
        block = qat_block(fine, plan, export, known.original, measured.device, measured.layers)
        measured = replace(measured, qat=block, warnings=[*measured.warnings, *qat_warnings(block)])
    if equalization is not None:
        notes = [equalization.note] if equalization.note else []
        measured = replace(measured, equalization=equalization.block, warnings=[*measured.warnings, *notes])
    reused = ["export"] * export_reused + ["conversion"] * bool(device.conversion.get("reused"))
    measured = replace(measured, reused=tuple(sorted({*reused, *device.reused, *measured.reused})),
                       cache_entries=tuple(step_cache.TAKEN.get() or ()))
    with steps.step("bundle", "writing the bundle"):
        return bundle_io.write(staging, plan, export, device, measured, steps.timings_s, reading)


def read_outputs(plan: Plan, export: OnnxExport, reference: dict) -> tuple[Reading, list[str]]:
    """What each output is (docs/outputs.md): the user's word, the model's metadata, names, shapes, then values
    (L2-normalised rows are embeddings); and how detect outputs are decoded."""
    given = plan.options.outputs
    shapes = {o.name: o.shape for o in export.outputs}
    tasks, notes = output_tasks(shapes, plan.evaluation.labels, given.task, given.per_output, plan.model.metadata)
    decided = set(shapes) if given.task is not None else set(given.per_output or {})
    tasks = embed_by_values(tasks, reference, decided)
    found, more = detectors(shapes, tasks, given.detect, plan.model.metadata)
    return Reading(tasks, found), notes + more


def _with_compression(plan: Plan, device_plan: Plan, device: DeviceModel, measured: Measured,
                      block: dict, workdir: Path) -> Measured:
    block, notes = device_columns(block, device, device_plan.model, plan.target.format)
    unmatched = [f"compression rule matched no layer: {rule}" for rule in block.get("unmatched_rules", [])]
    return replace(measured, compression=block, warnings=[*measured.warnings, *notes, *unmatched],
                   baseline_float_gzip_bytes=baseline_float_gzip(plan, workdir))
