"""Everything a build needs, loaded and checked before the first expensive step (exit code 2 on bad input)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.config import BuildOptions, Target, load_target
from edgekit.data import Dataset, load_data, split_holdout, validate_against
from edgekit.datachecks import calibration_warnings
from edgekit.emulated import choose as choose_emulator
from edgekit.errors import ConfigError, DataError
from edgekit.model import LoadedModel, TensorSpec, load_model
from edgekit.outdir import check_writable
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
    emulator_mode, note = choose_emulator(options.emulator, target.is_android)
    out = check_out(Path(out) if out is not None else default_out(model, target), force)
    loaded = load_model(model)
    if calibration is None and eval_data is None:
        raise DataError("no calibration data given", hint="pass --calibration DATA (.npz with x and optional y)")
    calib = load_data(calibration if calibration is not None else eval_data, recipe, "calibration data")
    evaluation = load_data(eval_data, recipe, "eval data") if eval_data is not None else None
    shapes = {k: v.shape[1:] for k, v in calib.inputs.items()}
    inputs = resolve_inputs(loaded, shapes, input_shape)
    calib = validate_against(calib, inputs, "calibration data")
    if evaluation is None:
        calib, evaluation = split_holdout(calib, options.holdout, options.seed)
        eval_source = "held-out calibration"
    else:
        evaluation = validate_against(evaluation, inputs, "eval data")
        eval_source = "eval"
    notes = ([note] if note else []) + calibration_warnings(calib, evaluation, eval_source == "eval")
    return Plan(target, options, loaded, inputs, calib, evaluation, eval_source, out, force, emulator_mode,
                None if recipe is None else str(recipe), notes)
