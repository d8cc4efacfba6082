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


# --- activation ranges: one implementation for every route -------------------------------------------------------

HISTOGRAM_BINS = 2048  # TensorRT's and onnxruntime's histogram calibrators: 2048 bins, 128 quantized bins
ENTROPY_QUANTIZED_BINS = 128
MSE_STEPS = 200  # clipping candidates per tensor: a * range, a in (0, 1]


class RangeCollector:
    """Activation ranges from float values, fed in chunks, by one calibration method.

    minmax: the global min/max. percentile and entropy: onnxruntime's HistogramCollector (the (100-p)/2 and
    (100+p)/2 percentiles; the KL-divergence threshold). mse: the clipping range whose INT8 grid has the least
    squared error over the same histogram. `symmetric`: INT8 in [-127, 127] around zero (TensorRT's Q/DQ), else the
    asymmetric [-128, 127] grid with a zero point (TFLite's activations).
    """

    def __init__(self, method: str, percentile: float = 99.99, symmetric: bool = False) -> None:
        from onnxruntime.quantization.calibrate import HistogramCollector

        self.method, self.symmetric = method, symmetric
        self.extremes: dict[str, tuple[float, float]] = {}  # minmax only: the histograms keep their own
        self.histograms = None if method == "minmax" else HistogramCollector(
            method="entropy" if method == "mse" else method, symmetric=symmetric, num_bins=HISTOGRAM_BINS,
            num_quantized_bins=ENTROPY_QUANTIZED_BINS, percentile=percentile, scenario="same")

    def collect(self, values: dict[str, np.ndarray]) -> None:
        """`values`: each tensor's float values over some samples (any shape)."""
        values = {k: v for k, v in values.items() if v.size}
        if self.histograms is not None:
            with quiet_quantization():
                self.histograms.collect({k: v.ravel() for k, v in values.items()})
            return
        for name, value in values.items():
            low, high = float(value.min()), float(value.max())
            old = self.extremes.get(name, (low, high))
            self.extremes[name] = (min(old[0], low), max(old[1], high))

    def ranges(self) -> dict[str, tuple[float, float]]:
        """(low, high) per tensor; symmetric ranges are (-amax, amax)."""
        if self.histograms is None:
            found = dict(self.extremes)
        elif self.method == "mse":
            found = {name: mse_range(hist, edges, low, high, self.symmetric)
                     for name, (hist, edges, low, high, *_) in self.histograms.get_histogram_dict().items()}
        else:
            with quiet_quantization():
                result = self.histograms.compute_collection_result()
            found = {name: (float(np.asarray(r[0]).reshape(())), float(np.asarray(r[1]).reshape(())))
                     for name, r in result.items()}
        if not self.symmetric:
            return found
        return {name: (-max(abs(low), abs(high)), max(abs(low), abs(high))) for name, (low, high) in found.items()}


def mse_range(hist: np.ndarray, edges: np.ndarray, low: float, high: float, symmetric: bool = False,
              steps: int = MSE_STEPS) -> tuple[float, float]:
    """The range [a*low, a*high], a in (0, 1], whose INT8 grid quantizes the histogram with least squared error
    (symmetric: [-a*amax, a*amax] on [-127, 127]; else asymmetric on [-128, 127] with a zero point)."""
    centres = (edges[:-1] + edges[1:]).astype(np.float64) / 2
    weights = hist.astype(np.float64) / max(float(hist.sum()), 1.0)
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if symmetric:
        high = max(-low, high)
        low = -high
    if high - low <= 0:
        return low, high
    factors = np.linspace(1.0 / steps, 1.0, steps)[:, None]
    lows, highs = factors * low, factors * high
    if symmetric:
        scales = highs / 127.0
        grid = np.clip(np.rint(centres / scales), -127, 127) * scales
    else:
        scales = (highs - lows) / 255.0
        zero = np.rint(-128 - lows / scales)
        grid = (np.clip(np.rint(centres / scales) + zero, -128, 127) - zero) * scales
    errors = ((grid - centres) ** 2 * weights).sum(axis=1)
    best = int(np.argmin(errors))
    return float(lows[best, 0]), float(highs[best, 0])


def onnx_values(model_path, inputs: dict[str, np.ndarray], names: set[str], chunk: int = 32):
    """The float values of the `names` tensors of an ONNX model, `chunk` samples at a time (batch 1 each)."""
    import onnx

    from edgekit.runners.onnxrt import cpu_session

    model = onnx.load(str(model_path))
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in sorted(names - present))
    session = cpu_session(model.SerializeToString(), optimize=False)
    wanted = [o.name for o in session.get_outputs() if o.name in names]
    count = len(next(iter(inputs.values())))
    for start in range(0, count, chunk):
        rows = [session.run(wanted, {k: v[i:i + 1] for k, v in inputs.items()})
                for i in range(start, min(start + chunk, count))]
        yield {name: np.concatenate([r[j].ravel() for r in rows]).astype(np.float32) for j, name in enumerate(wanted)}
