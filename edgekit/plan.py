"""Everything a build needs, loaded and checked before the first expensive step (exit code 2 on bad input)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.config import BuildOptions, Target, load_target
from edgekit.data import Dataset, load_data, split_holdout, validate_against
from edgekit.datachecks import (
    MIN_CALIBRATION_FLOOR,
    calibration_warnings,
    check_labels,
    refuse_small_calibration,
)
from edgekit.emulator_drift import choose as choose_emulator
from edgekit.errors import ConfigError, DataError
from edgekit.model import LoadedModel, TensorSpec, load_model
from edgekit.outdir import check_writable
from edgekit.routes import Route, get_route
from edgekit.steps.export_onnx import resolve_inputs


@dataclass(frozen=True)
class Plan:
    target: Target
    options: BuildOptions
    model: LoadedModel
    inputs: tuple[TensorSpec, ...]
    calibration: Dataset
    evaluation: Dataset
    eval_source: str  # "eval" or "held-out calibration"
    out: Path
    force: bool
    emulator: str = "host"
    recipe: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def io(self) -> str:
        return self.options.io or self.target.io

    @property
    def route(self) -> Route:
        return get_route(self.target.route)


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
              options: BuildOptions, recipe: str | Path | None = None, input_shape: tuple[int, ...] | None = None,
              force: bool = False) -> Plan:
    target = target if isinstance(target, Target) else load_target(target)
    emulator_mode, note = choose_emulator(options.emulator, target, get_route(target.route))
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
        calib, evaluation = split_holdout(calib, options.holdout, options.seed)
        eval_source = "held-out calibration"
    else:
        evaluation = validate_against(evaluation, inputs, "eval data")
        eval_source = "eval"
    refuse_small_calibration(calib, options.allow_small_calibration)
    if evaluation.labels is not None:
        check_labels(evaluation, class_count(loaded, inputs, calib, evaluation.labels.shape[1:]),
                     options.ignore_index, "eval data")
    notes = ([note] if note else []) + calibration_warnings(calib, evaluation, eval_source == "eval",
                                                                    options.ignore_index)
    dynamic = [s.name for s in loaded.inputs or () if s.shape and s.shape[0] is None]
    if dynamic:
        notes.append(f"{loaded.source} has a dynamic batch dimension ({', '.join(dynamic)}): built at batch 1, the "
                     "shape apps run on phones and edge boards")
    if calib.size < MIN_CALIBRATION_FLOOR:
        notes.append(f"--allow-small-calibration: INT8 ranges from only {calib.size} calibration samples")
    return Plan(target, options, loaded, inputs, calib, evaluation, eval_source, out, force, emulator_mode,
                None if recipe is None else str(recipe), notes)


def class_count(model: LoadedModel, inputs: tuple[TensorSpec, ...], data: Dataset,
                label_dims: tuple[int, ...] = ()) -> int | None:
    """Classes of the model's class-score output (per pixel with labels of shape (N, *label_dims)), from one
    forward pass on one sample (None when it has none or the pass fails here: the export step reports such
    failures with their own message)."""
    import numpy as np

    from edgekit.drift import class_output

    sample = [np.ascontiguousarray(data.inputs[s.name][:1]) for s in inputs]
    try:
        if model.is_torch:
            import torch

            from edgekit.runners.torch import _flatten

            with torch.no_grad():
                shapes = [tuple(o.shape) for o in _flatten(model.module(*map(torch.from_numpy, sample)))]
        else:
            from edgekit.runners.onnxrt import OnnxRunner

            with OnnxRunner(model.onnx_path) as runner:
                shapes = [v.shape for v in runner.run(dict(zip([s.name for s in inputs], sample))).values()]
    except Exception:  # the export step reports a model that does not run, with its own message
        return None
    scores = class_output({str(k): shape for k, shape in enumerate(shapes)}, tuple(label_dims))
    return None if scores is None else int(shapes[int(scores)][1])
