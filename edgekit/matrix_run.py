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
           progress: Callable[[str], None] | None = None, resume: bool = False) -> MatrixResult:
    """`edgekit matrix`: read and check MATRIX.toml completely (ConfigError, exit 2, before any build), build
    every cell into OUT (default: dist/<matrix-stem>), write OUT/matrix.json. `resume`: a cell whose bundle
    exists from a build of the same inputs (command, file contents, tool versions) is not built again."""
    from edgekit.matrix_file import load_matrix

    loaded = load_matrix(path)
    return run_matrix(loaded, Path(out) if out is not None else Path("dist") / loaded.source.stem, jobs, progress,
                      resume)


def default_jobs() -> int:
    """As many cells at once as there are cores, and as CELL_MEMORY allows of the machine's memory."""
    cores = os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = CELL_MEMORY
    return max(1, min(cores, memory // CELL_MEMORY))


def run_matrix(matrix: Matrix, out: Path, jobs: int | None = None,
               progress: Callable[[str], None] | None = None, resume: bool = False) -> MatrixResult:
    """Build every cell (at most `jobs` at once), write OUT/matrix.json, return the cells and the exit code: 1 if
    any cell gave 1, else 2 if any gave 2, else 3 if any gave 3, else 0. A failing cell never stops the others."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = jobs or default_jobs()
    say = progress or (lambda line: None)
    say(f"matrix {matrix.source.name}: {len(matrix.cells)} cells, {jobs} at a time, bundles under {out}")
    children: dict[str, subprocess.Popen] = {}
    lock = threading.Lock()
    hashes = {cell.bundle: inputs_hash(cell, out) for cell in matrix.cells}
    done = {cell.bundle: row for cell in matrix.cells if resume and (row := _resumed(cell, out, hashes[cell.bundle]))}
    if done:
        say(f"--resume: {len(done)} of {len(matrix.cells)} cells already built from the same inputs, kept")
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_build, cell, out, children, lock, hashes[cell.bundle]): cell
                       for cell in matrix.cells if cell.bundle not in done}
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


def _build(cell: Cell, out: Path, children: dict, lock: threading.Lock, digest: str) -> dict:
    start = time.perf_counter()
    log = out / cell.model.name / f"{cell.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    _stamp(cell, out).unlink(missing_ok=True)
    with open(log, "w") as stderr:
        child = subprocess.Popen(cell_command(cell, out), stdout=subprocess.PIPE, stderr=stderr, text=True)
        with lock:
            children[cell.bundle] = child
        stdout, _ = child.communicate()
        with lock:
            children.pop(cell.bundle, None)
    report = _report(stdout) if child.returncode in (0, 3) else None
    if report is not None:  # the bundle is complete: --resume may keep it
        _stamp(cell, out).write_text(digest)
    return _row(cell, child.returncode, report, log, time.perf_counter() - start)


def inputs_hash(cell: Cell, out: Path) -> str:
    """sha256 of what makes a cell's bundle: its command, the contents of its files, the installed tools."""
    import hashlib

    command = cell_command(cell, out)[3:]
    files = {arg: _file_sha256(arg) for arg in command if Path(arg).is_file()}
    text = json.dumps({"command": command, "files": files, "versions": _versions()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("edgekit", "torch", "onnx", "onnxruntime", "onnx2tf", "tensorflow", "litert-torch",
                 "ai-edge-quantizer", "ai-edge-litert", "openvino", "nncf", "executorch"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _stamp(cell: Cell, out: Path) -> Path:
    return out / cell.model.name / f"{cell.name}.inputs-sha256"


def _resumed(cell: Cell, out: Path, digest: str) -> dict | None:
    """The row of a bundle already built from the same inputs, from its report.json; None when it must be built."""
    stamp, report_file = _stamp(cell, out), out / cell.bundle / "report.json"
    if not (stamp.is_file() and report_file.is_file()) or stamp.read_text() != digest:
        return None
    from edgekit.report import passed

    report = json.loads(report_file.read_text())
    log = out / cell.model.name / f"{cell.name}.log"
    return {**_row(cell, 0 if passed(report) else 3, report, log, 0.0), "resumed": True}


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
            "seconds": round(seconds, 1), "error": None if report else _error(log), "resumed": False}


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
