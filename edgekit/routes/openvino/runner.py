"""The OpenVINO runtime on the host CPU: an IR (.xml/.bin) compiled for "CPU" in float32 precision.

OpenVINO's CPU plugin computes in bf16 by default on CPUs with AVX512_BF16 (50.7 dB against PyTorch on the
digits CNN instead of 129 dB), so the precision hint is set to f32: drift then measures the IR, not bf16 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.runners.base import Runner

F32 = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1"}


class OpenVinoRunner(Runner):
    where = "host-openvino-cpu"

    def __init__(self, path: Path) -> None:
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", F32)
        self.request = self.compiled.create_infer_request()
        inputs = [port.get_any_name() for port in self.compiled.inputs]
        self.ports = [port for port in self.compiled.outputs]
        super().__init__(inputs, [port.get_any_name() for port in self.ports])

    def _run_one(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.request.infer(inputs)
        return {name: np.array(result[port], copy=True) for name, port in zip(self.output_names, self.ports)}
