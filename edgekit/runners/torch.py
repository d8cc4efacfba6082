"""The PyTorch reference: the original model, run in eval mode without gradients."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgekit.runners.base import Runner


class TorchRunner(Runner):
    where = "host-pytorch"

    def __init__(self, module: Any, input_names: list[str], output_names: list[str], batch_size: int = 64) -> None:
        super().__init__(input_names, output_names)
        self.module = module
        self.batch_size = batch_size

    def _run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        count = len(next(iter(inputs.values())))
        chunks: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        with torch.no_grad():
            for lo in range(0, count, self.batch_size):
                args = [torch.from_numpy(np.ascontiguousarray(inputs[n][lo:lo + self.batch_size]))
                        for n in self.input_names]
                start = time.perf_counter()
                outputs = flatten_outputs(self.module(*args))
                self.latencies_s.append((time.perf_counter() - start) / len(args[0]))
                for name, value in zip(self.output_names, outputs):
                    chunks[name].append(value.detach().float().numpy())
        return {n: np.concatenate(v) for n, v in chunks.items()}


def flatten_outputs(result: Any) -> list[Any]:
    if isinstance(result, dict):
        return [v for _, v in result.items()]
    if isinstance(result, (list, tuple)):
        return [t for item in result for t in flatten_outputs(item)]
    return [result]

