"""The first stage of a build: the model, data, target and OUT loaded and checked into a Plan, and the route's
own checks, all before the first expensive step (exit code 2 on bad input)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.config.options import BuildOptions
from edgekit.config.target import Target, load_target
from edgekit.emulator.drift import choose as choose_emulator
from edgekit.errors import ConfigError, DataError
from edgekit.inputs.data import Dataset, load_data, split_holdout, validate_against
from edgekit.inputs.datachecks import (
    MIN_CALIBRATION_FLOOR,
    calibration_warnings,
    check_labels,
    refuse_small_calibration,
)
from edgekit.inputs.model import LoadedModel, TensorSpec, load_model
from edgekit.inputs.plan import Plan
from edgekit.measure.drift import class_output
from edgekit.pipeline.qat import check_request as check_qat
from edgekit.routes import get_route
from edgekit.runners.onnxrt import OnnxRunner
from edgekit.runners.torch import flatten_outputs
from edgekit.transform.equalize.step import check_request as check_equalize
from edgekit.transform.export import resolve_inputs
from edgekit.utils.outdir import check_writable


def prepare(model: Any, target: str | Path | Target, calibration: Any, eval_data: Any, out: str | Path | None,
            options: BuildOptions, force: bool = False) -> Plan:
    """The checked Plan, with the route's and equalization's own checks passed."""
    plan = make_plan(model, target, calibration, eval_data, out, options, force)
    get_route(plan.target.route).check(plan)
    check_equalize(plan)
    check_qat(plan)
    return plan


def default_out(model: Any, target: Target) -> Path:
    stem = Path(str(model)).stem if isinstance(model, (str, Path)) else type(model).__name__.lower()
    return Path("dist") / f"{stem.replace(':', '-')}-{target.name}"


def check_out(out: Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"output {out} already exists", hint="pass --force (force=True) to replace it, "
                          "or choose another --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder", hint="choose another --out")
    check_writable(out)
    return out


def make_plan(model: Any, target: str | Path | Target, calibration: Any, eval_data: Any, out: str | Path | None,
              options: BuildOptions, force: bool = False) -> Plan:
    recipe, input_shape = options.data.recipe, options.data.input_shape
    target = target if isinstance(target, Target) else load_target(target)
    emulator_mode, note = choose_emulator(options.verify.emulator, target, get_route(target.route))
    out = check_out(Path(out) if out is not None else default_out(model, target), force)
    loaded = load_model(model)
    if calibration is None and eval_data is None:
        raise DataError("no calibration data given", hint="pass --calibration DATA (.npz with x and optional y)")
    calib = load_data(calibration if calibration is not None else eval_data, recipe, "calibration data")
    evaluation = load_data(eval_data, recipe, "eval data") if eval_data is not None else None
    shapes = {k: v.shape[1:] for k, v in calib.inputs.items()}
    dtypes = {k: v.dtype.name for k, v in calib.inputs.items()}
    inputs = resolve_inputs(loaded, shapes, input_shape, dtypes)
    calib = validate_against(calib, inputs, "calibration data")
    if evaluation is None:
        calib, evaluation = split_holdout(calib, options.data.holdout, options.seed)
        eval_source = "held-out calibration"
    else:
        evaluation = validate_against(evaluation, inputs, "eval data")
        eval_source = "eval"
    refuse_small_calibration(calib, options.data.allow_small_calibration)
    if evaluation.labels is not None:
        check_labels(evaluation, class_count(loaded, inputs, calib, evaluation.labels.shape[1:]),
                     options.data.ignore_index, "eval data")
    notes = ([note] if note else []) + calibration_warnings(calib, evaluation, eval_source == "eval",
                                                                    options.data.ignore_index)
    dynamic = [s.name for s in loaded.inputs or () if s.shape and s.shape[0] is None]
    if dynamic:
        notes.append(f"{loaded.source} has a dynamic batch dimension ({', '.join(dynamic)}): built at batch 1, the "
                     "shape apps run on phones and edge boards")
    if calib.size < MIN_CALIBRATION_FLOOR:
        notes.append(f"--allow-small-calibration: INT8 ranges from only {calib.size} calibration samples")
    train = None
    if options.qat.train is not None:
        train = validate_against(load_data(options.qat.train, recipe, "train data"), inputs, "train data")
    return Plan(target, options, loaded, inputs, calib, evaluation, eval_source, out, force, emulator_mode, notes,
                train)


def class_count(model: LoadedModel, inputs: tuple[TensorSpec, ...], data: Dataset,
                label_dims: tuple[int, ...] = ()) -> int | None:
    """Classes of the model's class-score output (per pixel with labels of shape (N, *label_dims)), from one
    forward pass on one sample (None when it has none or the pass fails here: the export step reports such
    failures with their own message)."""
    sample = [np.ascontiguousarray(data.inputs[s.name][:1]) for s in inputs]
    try:
        if model.is_torch:
            import torch

            with torch.no_grad():
                shapes = [tuple(o.shape) for o in flatten_outputs(model.module(*map(torch.from_numpy, sample)))]
        else:
            with OnnxRunner(model.onnx_path) as runner:
                shapes = [v.shape for v in runner.run(dict(zip([s.name for s in inputs], sample))).values()]
    except Exception:  # the export step reports a model that does not run, with its own message
        return None
    scores = class_output({str(k): shape for k, shape in enumerate(shapes)}, tuple(label_dims))
    return None if scores is None else int(shapes[int(scores)][1])
