"""The Plan: everything a build needs, loaded and checked (pipeline/prepare.py makes it before the first expensive
step); routes, measurements and the bundle read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgekit.config.options import BuildOptions
from edgekit.config.target import Target
from edgekit.inputs.data import Dataset
from edgekit.inputs.model import LoadedModel, TensorSpec


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
    warnings: list[str] = field(default_factory=list)
    train: Dataset | None = None  # --train: more samples for --qat
    fine_tuned: bool = False  # the model was fine-tuned under the route's QAT simulation: built as simulated

    @property
    def recipe(self) -> str | None:
        return self.options.data.recipe

    @property
    def io(self) -> str:
        return self.options.conversion.io or self.target.io
