"""The local pool of a build matrix: how many cells build at once. With --jobs N, N. By default as many as there
are cores, and only as many as fit the machine's memory: each model's cells are expected to peak at what its
first finished cell measured (report.json resources.peak_rss_mb, the build or its largest child, onnx2tf's
worker), with a margin; a model that has not finished a cell yet is expected to take CELL_MEMORY_MB."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

CELL_MEMORY_MB = 4096  # one conversion before anything is measured (onnx2tf on a mid-size CNN)
MARGIN = 1.25  # a cell of the same model may peak somewhat higher than the one measured (another target)


def available_mb() -> int:
    """Memory available to new processes (MemAvailable), else the machine's total."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return CELL_MEMORY_MB


@dataclass
class Budget:
    """Admits a cell when fewer than `jobs` run and (unless `fixed`) the expected peaks of the running cells and
    this one fit `memory_mb`; one cell always runs, however large."""

    jobs: int
    memory_mb: int
    fixed: bool = False
    measured: dict[str, int] = field(default_factory=dict)  # model -> largest peak RSS (MiB) of its cells
    running: dict[int, int] = field(default_factory=dict)  # admitted cell id -> its expected MiB
    most_at_once: int = 0
    _lock: threading.Condition = field(default_factory=threading.Condition)

    def expected_mb(self, model: str) -> int:
        peak = self.measured.get(model)
        return CELL_MEMORY_MB if peak is None else int(peak * MARGIN)

    def fits(self, model: str) -> bool:
        if len(self.running) >= self.jobs:
            return False
        return self.fixed or not self.running or sum(self.running.values()) + self.expected_mb(model) <= self.memory_mb

    def admit(self, key: int, model: str, stopped: Callable[[], bool]) -> bool:
        """Wait for room; False when the matrix stopped meanwhile."""
        with self._lock:
            while not self.fits(model):
                if stopped():
                    return False
                self._lock.wait(timeout=0.5)
            self.running[key] = self.expected_mb(model)
            self.most_at_once = max(self.most_at_once, len(self.running))
            return not stopped()

    def done(self, key: int, model: str, peak_mb: int | None) -> None:
        with self._lock:
            self.running.pop(key, None)
            if peak_mb:
                self.measured[model] = max(self.measured.get(model, 0), int(peak_mb))
            self._lock.notify_all()


def default_budget(jobs: int | None) -> Budget:
    cores = os.cpu_count() or 1
    return Budget(jobs or cores, available_mb(), fixed=jobs is not None)


def run_pool(cells: list, budget: Budget, build: Callable[[object], dict | None],
             stopping: tuple[Callable[[], bool], Callable[[], None]], finished: Callable[[object, dict], None]) -> None:
    """Build `cells` on threads (each runs its cell's process), as `budget` admits them; `finished(cell, row)` as
    each comes back, in the calling thread. A failing cell never stops the others. `stopping`: (stopped, stop):
    on Ctrl-C or SIGTERM no new cell starts, stop() ends the running ones, and the threads are waited for."""
    stopped, stop = stopping

    def one(index: int, cell) -> dict | None:
        model = cell.model.name
        if not budget.admit(index, model, stopped):
            budget.done(index, model, None)
            return None
        row = None
        try:
            row = build(cell)
            return row
        finally:
            budget.done(index, model, (row or {}).get("peak_rss_mb"))

    pool = ThreadPoolExecutor(max_workers=budget.jobs)
    try:
        futures = {pool.submit(one, i, cell): cell for i, cell in enumerate(cells)}
        for future in as_completed(futures):
            row = future.result()
            if row is not None:
                finished(futures[future], row)
    except BaseException:  # Ctrl-C, SIGTERM: the caller stops the running cells; none starts
        pool.shutdown(wait=False, cancel_futures=True)
        stop()
        pool.shutdown(wait=True)
        raise
    pool.shutdown()
