"""onnxruntime on the CPU: runs reference.onnx, and the Q/DQ ONNX as an emulation of TensorRT INT8."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.runners.base import Runner
from edgekit.standalone.check import saturating_host  # noqa: F401  (the one definition: check.py ships it)


def cpu_session(model: Path | bytes, optimize: bool = True):
    """A quiet onnxruntime CPU session of a file or a serialized model; `optimize=False` runs the graph as written,
    so every tensor added as an output is the one the model computes (per-layer drift, calibration)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


class OnnxRunner(Runner):
    where = "host-onnxruntime"

    def __init__(self, path: Path, optimize: bool = True) -> None:
        self.session = cpu_session(path, optimize)
        super().__init__([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])

    def _run_one(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))
