"""Quantization-aware fine-tuning inside a build (`--qat`): the route's QAT quantizer, the fine-tune on the calibration
data (and `--train`), the fine-tuned model handed to export, and the report's `qat` block, whose
`simulation_vs_device` compares the shipped device model with the QAT simulation itself: a gap there is the export's,
not the training's."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.config.target import LAYER_PRECISION
from edgekit.errors import ConfigError, UnsupportedError
from edgekit.inputs.model import LoadedModel
from edgekit.inputs.plan import Plan
from edgekit.measure.drift import class_output, is_scores, output_metrics, power_db, worst_sqnr
from edgekit.measure.layers import layer_samples
from edgekit.measure.measured import Measured
from edgekit.measure.tasks import Reading
from edgekit.routes import get_route
from edgekit.routes.device import DeviceModel
from edgekit.routes.qat import keeping_out
from edgekit.transform.export import OnnxExport
from edgekit.transform.qat import Data, Tuned, fine_tune, layer_errors, simulate

GAP_DB = 6.0  # a device layer this far below the simulation's SQNR (4x its error power) is named


@dataclass(frozen=True)
class Fine:
    """A fine-tuned model ready for export, its simulation, and the `qat` block so far."""

    model: LoadedModel
    tuned: Tuned
    block: dict


def check_request(plan: Plan) -> None:
    """Before any expensive step: `--qat` needs a PyTorch model and an INT8 target (exit 2 otherwise)."""
    qat = plan.options.qat
    if not qat.enabled:
        if qat.train is not None:
            raise ConfigError("--train gives data to --qat, which is not asked for", hint="add --qat STEPS")
        return
    if qat.steps == "auto" and plan.options.fallback.mode != "auto":
        raise ConfigError("--qat auto is the last rung of --fallback auto", hint="add --fallback auto, or give "
                                                                                 "--qat a number of steps")
    if plan.target.precision != "int8":
        raise UnsupportedError(f"--qat simulates INT8 quantization; {plan.target.name} is {plan.target.precision}",
                               hint="use an -int8 target, or drop --qat")
    if not plan.model.is_torch:
        raise UnsupportedError("--qat fine-tunes a PyTorch model; an ONNX model has no training graph here",
                               hint="give the .pt2, TorchScript or module:factory the ONNX file was exported from")


def fine_tuned(plan: Plan, note: Callable[[str], None], keep_out: frozenset[str] = frozenset()) -> Fine:
    """The plan's model (the original, or its equalized / compressed copy) fine-tuned under the route's QAT
    quantizer, distilled from itself; the modules in `keep_out` (those the ladder keeps out of INT8) unquantized."""
    import torch

    model = plan.model
    example = tuple(torch.from_numpy(np.ascontiguousarray(plan.calibration.inputs[s.name][:1])) for s in plan.inputs)
    module = _module(model, example)
    data = _data(plan, module, example)
    asked = plan.options.conversion.converter  # the route simulates the converter that will build the model
    target = dataclasses.replace(plan.target, converter=asked) if asked and asked != "auto" else plan.target
    quantizer, scheme = get_route(plan.target.route).qat_quantizer(target)
    quantizer = keeping_out(quantizer, keep_out)
    qat = plan.options.qat
    tuned = fine_tune(module, data, quantizer, qat.budget(), qat.seconds, plan.options.seed, note,
                      held_out=tuple(plan.evaluation.inputs[s.name] for s in plan.inputs))
    if model.kind == "module":
        ready = dataclasses.replace(model, module=tuned.module, program=None)
    else:
        program = torch.export.export(tuned.module, example)
        ready = dataclasses.replace(model, kind="exported_program", program=program, module=program.module())
    train = plan.train
    block = {**tuned.block, "quantizer": scheme, "rung": "asked" if qat.steps != "auto" else "fallback",
             "shipped": True, "kept_out": sorted(keep_out),
             "data": {"calibration_samples": plan.calibration.size, "train_samples": 0 if train is None else train.size,
                      "train_sha256": None if train is None else train.sha256}}
    return Fine(ready, tuned, block)


def qat_rung(plan: Plan, device_plan: Plan, shipped: DeviceModel, measured: Measured, reading: Reading,
             workdir: Path, note: Callable[[str], None]) -> tuple[DeviceModel, Measured]:
    """`--qat auto`, the last rung of `--fallback auto` when the ladder could not pass: the model fine-tuned under
    INT8 with the layers the ladder kept out of it left out (in the simulation and in the build), built and measured
    like the first build; shipped when it passes, else the ladder's model ships and the report says what QAT
    reached. Its ladder row and the `qat` block say what it cost."""
    from edgekit.pipeline.verify import evaluate, references
    from edgekit.routes.device import check_io, model_bytes
    from edgekit.transform.export import exported

    route = get_route(plan.target.route)
    default = LAYER_PRECISION.get(plan.target.precision, "int8")
    kept = [row for row in measured.layers or [] if row.get("precision", default) != default]
    modules = frozenset(m for row in kept for m in (row.get("modules") or [row.get("module")]) if m)
    fine = fine_tuned(device_plan, note, modules)
    tuned_plan = dataclasses.replace(device_plan, model=fine.model, fine_tuned=True)
    folder = workdir / "qat"
    folder.mkdir()
    export, _ = exported(fine.model, plan.inputs, folder / "reference.onnx")
    known = references(plan, export, tuned_plan)
    device = route.build(tuned_plan, export, folder)
    check_io(device, plan.io)
    if kept:  # the ladder's choices stand: what it kept out of INT8 stays out (same export, same tensor names)
        device = route.set_precisions(device, {row["tensor"]: row["precision"] for row in kept}, measured.layers,
                                      plan.target)
    result = evaluate(plan, export, device, tuned_plan, reading, known)
    drift = result.drift
    row = {"module": "(every other layer)" if kept else "(every layer)", "tensor": "*", "group": None,
           "precision": "int8", "rung": "qat",
           "passed": bool(drift["passed"]), "sqnr_db": _worst(drift),
           "accuracy_drop": drift["accuracy_drop"], "device_bytes": model_bytes(device),
           "host_latency_ms": result.latency_ms.get("host"), "latency_ratio": None, "within_bounds": True,
           "kept": bool(drift["passed"]), "seconds": fine.block["seconds"]}
    block = qat_block(fine, plan, export, known.original, result.device, result.layers)
    block["shipped"] = bool(drift["passed"])
    ladder = [*(measured.ladder or []), row]
    where = (f"with the {len(kept)} layer(s) the ladder kept out of INT8 ({', '.join(sorted(modules))}) left out"
             if kept else "in pure INT8")
    if drift["passed"]:
        line = (f"fallback auto: the ladder did not pass; quantization-aware fine-tuning ({fine.block['steps_done']} "
                f"steps, {fine.block['seconds']:.0f} s) passes {where} and ships")
        return device, dataclasses.replace(result, ladder=ladder, qat=block,
                                           warnings=[*result.warnings, line, *qat_warnings(block)])
    line = (f"fallback auto: quantization-aware fine-tuning ({fine.block['steps_done']} steps, "
            f"{fine.block['seconds']:.0f} s) does not pass either (accuracy drop {drift['accuracy_drop']}, worst "
            f"SQNR {row['sqnr_db']} dB); the ladder's model ships")
    return shipped, dataclasses.replace(measured, ladder=ladder, qat=block,
                                        warnings=[*measured.warnings, line, *qat_warnings(block)])


def qat_block(fine: Fine, plan: Plan, export: OnnxExport, original: dict[str, np.ndarray],
              device: dict[str, np.ndarray], layers: list[dict] | None) -> dict:
    """The report's `qat` block: the simulation against the float model before and after the fine-tune, and the
    device model against the simulation (SQNR, cosine and top-1 agreement of class scores per output; and, where
    the route measures its layers, per layer: where the device departs from what the fine-tune trained for)."""
    inputs = tuple(plan.evaluation.inputs[s.name] for s in plan.inputs)
    names = [o.name for o in export.outputs]
    before = dict(zip(names, fine.tuned.before))
    after = dict(zip(names, simulate(fine.tuned, inputs)))
    versus = _compared(after, device)
    if layers:
        from edgekit.pipeline.verify import LAYER_SAMPLES

        count = layer_samples(export.path, min(LAYER_SAMPLES, plan.evaluation.size))
        rows = layer_gaps(simulated_layers(fine.tuned, tuple(x[:count] for x in inputs)), layers,
                          tensor_order(export.path))
        versus = {**versus, "layers": rows, "first_gap": next((r for r in rows if r["gap_db"] >= GAP_DB), None)}
    return {**fine.block,
            "simulation_before": _compared(original, before), "simulation_after": _compared(original, after),
            "simulation_vs_device": versus}


def simulated_layers(tuned: Tuned, inputs: tuple[np.ndarray, ...]) -> list[dict]:
    """The simulation's activations in graph order: module, op and SQNR against the float model up to there."""
    return [{"module": row["module"], "op": row["op"], "sqnr_db": round(power_db(row["signal"], row["noise"]), 3)}
            for row in layer_errors(tuned, inputs)]


def layer_gaps(simulated: list[dict], layers: list[dict], order: dict[str, int]) -> list[dict]:
    """Each module's output in the device model beside the simulation's, in graph order: the device's activation
    against the float model (`device_sqnr_db`; its last quantized tensor in the module, by the export's node
    `order`), the simulation's at the module's last fake quantization, and how far the device falls behind
    (`gap_db`)."""
    simulation = {row["module"]: (index, row) for index, row in enumerate(simulated) if row["module"]}
    device: dict[str, tuple[int, dict]] = {}
    for row in layers:
        module = (row.get("modules") or [row.get("module")])[-1]  # the module that wrote the tensor
        at = order.get(row.get("tensor"), -1)
        if module in simulation and row.get("accumulated_sqnr_db") is not None and at >= device.get(module, (-2,))[0]:
            device[module] = (at, row)
    paired = []
    for module, (_, row) in device.items():
        index, sim = simulation[module]
        paired.append((index, {"module": module, "op": row.get("op"), "simulation_op": sim["op"],
                               "device_sqnr_db": row["accumulated_sqnr_db"], "simulation_sqnr_db": sim["sqnr_db"],
                               "gap_db": round(sim["sqnr_db"] - row["accumulated_sqnr_db"], 3)}))
    return [row for _, row in sorted(paired, key=lambda pair: pair[0])]


def tensor_order(path: Path) -> dict[str, int]:
    """Each tensor of an ONNX model: the position of the node that writes it."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return {name: index for index, node in enumerate(nodes) for name in node.output}


def qat_warnings(block: dict | None) -> list[str]:
    """A line for the steps not taken (a non-finite gradient), one when no step beat the original weights on the
    held-out samples, and one naming the first layer where the device model falls GAP_DB behind the QAT
    simulation."""
    skipped = (block or {}).get("skipped_steps") or 0
    lines = [f"qat: {skipped} of {block['steps_done'] + skipped} step(s) were not taken: their gradient was not "
             "finite (a rounded value at a singularity, such as a variance rounded to 0 before RSQRT)"
             ] if skipped else []
    if block and block.get("held_out_samples") and block.get("best_step") == 0 and block.get("steps_done"):
        lines.append(f"qat: no step lowered the loss on the {block['held_out_samples']} held-out samples: the "
                     "original weights are kept (INT8 already suits this model; the device model is the one "
                     "post-training quantization builds)")
    gap = (block or {}).get("simulation_vs_device", {}).get("first_gap")
    if gap is None:
        return lines
    return [*lines, f"qat: the device model departs from the QAT simulation at module {gap['module']} (device op "
            f"{gap['op']}, simulated {gap['simulation_op']}): {gap['device_sqnr_db']} dB against the float model "
            f"where the simulation has {gap['simulation_sqnr_db']} dB; the conversion does not compute what the "
            f"fine-tune trained for there"]


def _worst(drift: dict) -> float | None:
    values = [worst_sqnr(row) for row in drift["outputs"]]
    return min((v for v in values if v is not None), default=None)


def _compared(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict:
    rows = output_metrics(reference, other)
    for row in rows:
        ref = reference[row["name"]]
        row["top1_agreement"] = (float(np.mean(ref.argmax(1) == other[row["name"]].argmax(1)))
                                 if is_scores(ref.shape) else None)
    return {"samples": len(next(iter(reference.values()))), "outputs": rows}


def _module(model: LoadedModel, example: tuple):
    if model.kind == "module":
        return model.module
    if model.kind == "exported_program":  # its batch guard would refuse the fine-tune's batch before tracing
        return model.program.module(check_guards=False)
    from edgekit.transform.compress.lift import exported_program

    return exported_program(model, example).module()


def _data(plan: Plan, module, example: tuple) -> Data:
    """Calibration samples (and --train's), their labels where they have them (-1 where not), and the class-score
    output."""
    import torch

    from edgekit.runners.torch import flatten_outputs

    with torch.no_grad():
        shapes = {str(i): tuple(o.shape) for i, o in enumerate(flatten_outputs(module(*example)))}
    scores = class_output(shapes) if plan.options.outputs.task in (None, "classify") else None
    sets = [plan.calibration] + ([plan.train] if plan.train is not None else [])
    inputs = tuple(np.concatenate([d.inputs[s.name] for d in sets]) for s in plan.inputs)
    has = [d.labels is not None and d.labels.ndim == 1 for d in sets]
    observe = min(plan.calibration.size, plan.options.calibration.max_samples)  # what the device calibrates on
    if scores is None or not any(has):
        return Data(inputs, None, None if scores is None else int(scores), observe)
    labels = np.concatenate([d.labels.astype(np.int64) if labelled else np.full(d.size, -1, np.int64)
                             for d, labelled in zip(sets, has)])
    return Data(inputs, labels, int(scores), observe)
