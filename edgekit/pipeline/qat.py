"""Quantization-aware fine-tuning inside a build (`--qat`): the route's QAT quantizer, the fine-tune on the calibration
data (and `--train`), the fine-tuned model handed to export, and the report's `qat` block, whose
`simulation_vs_device` compares the shipped device model with the QAT simulation itself: a gap there is the export's,
not the training's."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgekit.errors import ConfigError, UnsupportedError
from edgekit.inputs.model import LoadedModel
from edgekit.inputs.plan import Plan
from edgekit.measure.drift import class_output, is_scores, output_metrics
from edgekit.routes import get_route
from edgekit.transform.qat import Data, Tuned, fine_tune, simulate


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


def fine_tuned(plan: Plan, note: Callable[[str], None]) -> Fine:
    """The plan's model (the original, or its equalized / compressed copy) fine-tuned under the route's QAT
    quantizer, distilled from itself."""
    import torch

    model = plan.model
    example = tuple(torch.from_numpy(np.ascontiguousarray(plan.calibration.inputs[s.name][:1])) for s in plan.inputs)
    module = _module(model, example)
    data = _data(plan, module, example)
    quantizer, scheme = get_route(plan.target.route).qat_quantizer(plan.target)
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
             "data": {"calibration_samples": plan.calibration.size, "train_samples": 0 if train is None else train.size,
                      "train_sha256": None if train is None else train.sha256}}
    return Fine(ready, tuned, block)


def qat_block(fine: Fine, plan: Plan, names: list[str], original: dict[str, np.ndarray],
              device: dict[str, np.ndarray]) -> dict:
    """The report's `qat` block: the simulation against the float model before and after the fine-tune, and the
    device model against the simulation (SQNR, cosine and top-1 agreement of class scores per output)."""
    inputs = tuple(plan.evaluation.inputs[s.name] for s in plan.inputs)
    before = dict(zip(names, fine.tuned.before))
    after = dict(zip(names, simulate(fine.tuned, inputs)))
    return {**{k: v for k, v in fine.block.items()},
            "simulation_before": _compared(original, before), "simulation_after": _compared(original, after),
            "simulation_vs_device": _compared(after, device)}


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
    """Calibration samples (and --train's), the labels when every sample has one, and the class-score output."""
    import torch

    from edgekit.runners.torch import flatten_outputs

    with torch.no_grad():
        shapes = {str(i): tuple(o.shape) for i, o in enumerate(flatten_outputs(module(*example)))}
    scores = class_output(shapes) if plan.options.outputs.task in (None, "classify") else None
    sets = [plan.calibration] + ([plan.train] if plan.train is not None else [])
    inputs = tuple(np.concatenate([d.inputs[s.name] for d in sets]) for s in plan.inputs)
    labelled = all(d.labels is not None and d.labels.ndim == 1 for d in sets) and scores is not None
    labels = np.concatenate([d.labels for d in sets]) if labelled else None
    return Data(inputs, labels, None if scores is None else int(scores))
