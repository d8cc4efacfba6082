"""One interface for every runtime: run(inputs by name, batched) -> outputs by name, batched, with latency."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgekit.errors import DataError


class Runner:
    """Subclasses implement `_run_one` (batch of one sample) or override `_run_batch`; callers use `run`."""

    where = "host"

    def __init__(self, input_names: list[str], output_names: list[str]) -> None:
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.latencies_s: list[float] = []

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the runtime; the default has nothing to release."""

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run all samples (arrays of shape [N, ...] in the model's layout); outputs stacked the same way."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DataError(f"runner input(s) missing: {', '.join(missing)}", hint=f"expected {self.input_names}")
        return self._run_batch({n: inputs[n] for n in self.input_names})

    def _run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(next(iter(inputs.values())))
        results: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for i in range(count):
            start = time.perf_counter()
            outputs = self._run_one({n: a[i:i + 1] for n, a in inputs.items()})
            self.latencies_s.append(time.perf_counter() - start)
            for name in self.output_names:
                results[name].append(outputs[name])
        return {n: np.concatenate(v) for n, v in results.items()}

    def _run_one(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def median_latency_ms(self) -> float | None:
        return float(np.median(self.latencies_s) * 1000.0) if self.latencies_s else None
