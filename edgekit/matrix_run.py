"""Running a build matrix on the local machine: every cell an ordinary `edgekit build` in its own process, a pool
of them at a time, their verdicts gathered in OUT/matrix.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from edgekit.matrix_file import Cell, Matrix

SCHEMA_ID = "edgekit.matrix/1"
GB = 2**30
CELL_MEMORY = 4 * GB  # what one conversion may take (onnx2tf on a mid-size CNN); the pool never overcommits it


@dataclass(frozen=True)
class MatrixResult:
    out: Path
    cells: list[dict]
    exit_code: int

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def matrix(path: str | Path, out: str | Path | None = None, jobs: int | None = None,
           progress: Callable[[str], None] | None = None) -> MatrixResult:
    """`edgekit matrix`: read and check MATRIX.toml completely (ConfigError, exit 2, before any build), build
    every cell into OUT (default: dist/<matrix-stem>), write OUT/matrix.json."""
    from edgekit.matrix_file import load_matrix

    loaded = load_matrix(path)
    return run_matrix(loaded, Path(out) if out is not None else Path("dist") / loaded.source.stem, jobs, progress)


def default_jobs() -> int:
    """As many cells at once as there are cores, and as CELL_MEMORY allows of the machine's memory."""
    cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = CELL_MEMORY
    return max(1, min(cores, memory // CELL_MEMORY))


def run_matrix(matrix: Matrix, out: Path, jobs: int | None = None,
               progress: Callable[[str], None] | None = None) -> MatrixResult:
    """Build every cell (at most `jobs` at once), write OUT/matrix.json, return the cells and the exit code: 1 if
    any cell gave 1, else 2 if any gave 2, else 3 if any gave 3, else 0. A failing cell never stops the others."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = jobs or default_jobs()
    say = progress or (lambda line: None)
    say(f"matrix {matrix.source.name}: {len(matrix.cells)} cells, {jobs} at a time, bundles under {out}")
    children: dict[str, subprocess.Popen] = {}
    lock = threading.Lock()
    done: dict[str, dict] = {}
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_build, cell, out, children, lock): cell for cell in matrix.cells}
            for future in as_completed(futures):
                row = future.result()
                done[futures[future].bundle] = row
                say(f"[{len(done)}/{len(matrix.cells)}] {_line(row)}")
    except KeyboardInterrupt:
        _stop(children, lock)
        raise
    cells = [done[cell.bundle] for cell in matrix.cells]
    code = aggregate([c["exit_code"] for c in cells])
    _write(out / "matrix.json", {"schema": SCHEMA_ID, "matrix": str(matrix.source), "axes": matrix.axes,
                                 "exit_code": code, "cells": cells})
    return MatrixResult(out, cells, code)


def aggregate(codes: list[int]) -> int:
    for code in (1, 2, 3):
        if code in codes:
            return code
    return 0 if all(c == 0 for c in codes) else 1  # a signal (130, 143) or an unknown code is a failure


def cell_command(cell: Cell, out: Path) -> list[str]:
    """The `edgekit build` command line of one cell."""
    model = cell.model
    command = [sys.executable, "-m", "edgekit.cli", "build", model.model, "--out", str(out / cell.bundle),
               "--force", "--json"]
    for key, value in [("calibration", model.calibration), ("eval", model.eval), *model.settings.items(),
                       *cell.axes.items()]:
        if value is not None:
            command += [f"--{key.replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, list)
                        else str(value)]
    return command


def _build(cell: Cell, out: Path, children: dict, lock: threading.Lock) -> dict:
    start = time.perf_counter()
    log = out / cell.model.name / f"{cell.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as stderr:
        child = subprocess.Popen(cell_command(cell, out), stdout=subprocess.PIPE, stderr=stderr, text=True)
        with lock:
            children[cell.bundle] = child
        stdout, _ = child.communicate()
        with lock:
            children.pop(cell.bundle, None)
    report = _report(stdout) if child.returncode in (0, 3) else None
    return _row(cell, child.returncode, report, log, time.perf_counter() - start)


def _report(stdout: str) -> dict | None:
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        return None


def _row(cell: Cell, code: int, report: dict | None, log: Path, seconds: float) -> dict:
    drift = (report or {}).get("drift")
    outputs = [o["sqnr_db"] for o in (drift or {}).get("outputs", []) if o.get("sqnr_db") is not None]
    return {"model": cell.model.name, "name": cell.name, **cell.axes, "bundle": cell.bundle if report else None,
            "exit_code": code, "passed": code == 0,
            "drift": None if drift is None else {
                "accuracy_drop": drift["accuracy_drop"], "top1_agreement": drift["top1_agreement"],
                "sqnr_db": min(outputs) if outputs else None, "passed": drift["passed"]},
            "size": None if report is None else {"device_bytes": report["size"]["device_bytes"],
                                                 "device_gzip_bytes": report["size"]["device_gzip_bytes"]},
            "latency_ms": None if report is None else report["latency_ms"].get("host"),
            "seconds": round(seconds, 1), "error": None if report else _error(log)}


def _error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return next((line for line in reversed(lines) if line.startswith("error")), lines[-1] if lines else "no output")


def _line(row: dict) -> str:
    drift = row["drift"] or {}
    if row["exit_code"] in (0, 3):
        verdict = "passed" if row["passed"] else "drift over a threshold"
        drop = drift.get("accuracy_drop")
        return (f"{row['model']}/{row['name']}: exit {row['exit_code']} ({verdict}), drop "
                f"{'n/a' if drop is None else f'{drop:.2f}'}, {row['size']['device_bytes']:,} bytes, "
                f"{row['seconds']:.1f} s")
    return f"{row['model']}/{row['name']}: exit {row['exit_code']}: {row['error']}"


def _stop(children: dict, lock: threading.Lock) -> None:
    """Ctrl-C: every running build gets SIGTERM (it removes its staging and work folders) and is waited for."""
    with lock:
        running = list(children.values())
    for child in running:
        child.terminate()
    for child in running:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()


def _write(path: Path, data: dict) -> None:
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)
