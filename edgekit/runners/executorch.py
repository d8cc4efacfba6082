"""ExecuTorch's Python runtime on the host: a .pte program's `forward`, one sample (batch 1) at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.runners.base import Runner


class ExecuTorchRunner(Runner):
    where = "host-executorch"

    def __init__(self, path: Path, input_names: list[str], output_names: list[str]) -> None:
        from edgekit.routes.executorch import quiet_imports

        with quiet_imports():
            from executorch.runtime import Runtime

            self.method = Runtime.get().load_program(Path(path)).load_method("forward")
        super().__init__(input_names, output_names)

    def _run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edgekit.quiet import filtered_stderr
        from edgekit.routes.executorch import is_noise

        with filtered_stderr(is_noise):  # the runtime probes the CPU on first use, in C++ on stderr
            return super()._run_batch(inputs)

    def _run_one(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in self.input_names]
        outputs = self.method.execute(args)
        return {name: value.detach().numpy().astype(np.float32, copy=True)
                for name, value in zip(self.output_names, outputs)}
