"""onnxruntime on the CPU: runs reference.onnx, and the Q/DQ ONNX as an emulation of TensorRT INT8."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.runners.base import Runner


class OnnxRunner(Runner):
    where = "host-onnxruntime"

    def __init__(self, path: Path, optimize: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        super().__init__([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])

    def _run_one(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))
