"""onnxruntime on the CPU: runs reference.onnx, and the Q/DQ ONNX as an emulation of TensorRT INT8."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import numpy as np

from edgekit.runners.base import Runner


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


def saturating_host(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """An x86-64 CPU without VNNI: onnxruntime's U8S8 integer kernels there add two products in a saturating 16-bit
    lane (vpmaddubsw; its quantization docs warn of it), results no ARM64 device gives. Measured here on the digits
    CNN: 20 dB from the same Q/DQ model computed as written (39 dB from PyTorch)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return not re.search(r"\b(avx512_vnni|avx_vnni)\b", flags)


class OnnxRunner(Runner):
    where = "host-onnxruntime"

    def __init__(self, path: Path, optimize: bool = True) -> None:
        self.session = cpu_session(path, optimize)
        super().__init__([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])

    def _run_one(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))
