"""Calibration helpers shared by the routes that quantize with onnxruntime.quantization (tensorrt, onnxruntime)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader


class SampleReader(CalibrationDataReader):
    """Samples start..stop of the calibration inputs, one at a time (the export has batch 1)."""

    def __init__(self, inputs: dict[str, np.ndarray], start: int, stop: int) -> None:
        self.inputs = inputs
        self.rows = iter(range(start, min(stop, len(next(iter(inputs.values()))))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self.rows, None)
        return None if row is None else {name: array[row : row + 1] for name, array in self.inputs.items()}


@contextlib.contextmanager
def quiet_quantization() -> Iterator[None]:
    """onnxruntime.quantization prints progress to stdout and logs a pre-processing hint on the root logger."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)
