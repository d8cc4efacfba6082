"""ExecuTorch's Python runtime on the host: a .pte program's `forward`, one sample (batch 1) at a time."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgekit.runners.base import Runner
from edgekit.utils.quiet import filtered_stderr, quiet_loggers

NOISE = (b"[cpuinfo_utils.cpp:", b"Failed to load ")  # the runtime's CPU probe; torchao's CUDA-only extensions


def is_noise(line: bytes) -> bool:
    return line.startswith(NOISE) or (b"torch/utils/_pytree.py" in line and b"register_constant" in line)


@contextlib.contextmanager
def quiet_imports() -> Iterator[None]:
    """ExecuTorch and torchao print (on stdout too), warn and log on import and first use: missing CUDA-only
    extensions, deprecations, the runtime's CPU probe. None of it is for users, and stdout carries `--json`."""
    with quiet_loggers(["torch.utils._pytree", "torchao", "executorch"]), filtered_stderr(is_noise), \
            contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


class ExecuTorchRunner(Runner):
    where = "host-executorch"

    def __init__(self, path: Path, input_names: list[str], output_names: list[str]) -> None:
        with quiet_imports():
            from executorch.runtime import Runtime

            self.method = Runtime.get().load_program(Path(path)).load_method("forward")
        super().__init__(input_names, output_names)

    def _run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with filtered_stderr(is_noise):  # the runtime probes the CPU on first use, in C++ on stderr
            return super()._run_batch(inputs)

    def _run_one(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in self.input_names]
        outputs = self.method.execute(args)
        return {name: value.detach().numpy().astype(np.float32, copy=True)
                for name, value in zip(self.output_names, outputs)}
