"""Running a build matrix on the local machine: every cell an ordinary `edgekit build` in its own process, a pool
of them at a time, their verdicts gathered in OUT/matrix.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit.build_matrix.file import Cell, Matrix
from edgekit.build_matrix.html import matrix_html
from edgekit.build_matrix.pool import CELL_MEMORY_MB, default_budget, run_pool
from edgekit.cache import store as step_cache
from edgekit.errors import ConfigError, EdgekitError
from edgekit.utils import outdir

SCHEMA_ID = "edgekit.matrix/1"
Watch = Callable[..., None]  # watch(event, cell, row=None): see matrix()
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schema" / "matrix.schema.json"
STEPS = ".steps"  # OUT/.steps: the step cache the cells share (edgekit/cache/store.py)
REUSABLE = ("export", "conversion", "calibration", "reference")  # report.json resources.reused_steps
CELL_MEMORY = CELL_MEMORY_MB * 2**20  # what a Ray task declares: one conversion (onnx2tf on a mid-size CNN)


@dataclass(frozen=True)
class MatrixResult:
    out: Path
    cells: list[dict]
    exit_code: int

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def matrix(path: str | Path, out: str | Path | None = None, jobs: int | None = None,
           progress: Callable[[str], None] | None = None, resume: bool = False,
           ray: str | None = None, baseline: str | Path | None = None, watch: Watch | None = None,
           max_cells: int | None = None) -> MatrixResult:
    """`edgekit matrix`: read and check MATRIX.toml completely (ConfigError, exit 2, before any build), build
    every cell into OUT (default: dist/<matrix-stem>), write OUT/matrix.json. `resume`: a cell whose bundle
    exists from a build of the same inputs (command, file contents, tool versions) is not built again. `ray`:
    None builds on this machine; "local" starts a local Ray runtime, an address joins that cluster. `baseline`: the
    OUT of a previous run; every cell built in both is compared with `edgekit diff` (the release gate: a
    regression makes the matrix exit 3). `watch(event, cell, row)`: each cell "queued", then "running" (or
    "submitted" to Ray), then "done" with its matrix.json row (edgekit/build_matrix/board.py draws them).
    `max_cells`: the most cells the file may expand to (default 1000; its axes may multiply to 100 times that)."""
    from edgekit.build_matrix.file import MAX_CELLS, load_matrix

    loaded = load_matrix(path, MAX_CELLS if max_cells is None else max_cells)
    if baseline is not None and not (Path(baseline) / "matrix.json").is_file():
        raise ConfigError(f"--baseline {baseline} holds no matrix.json",
                          hint="give the OUT folder of a previous edgekit matrix run")
    if ray is not None:
        from edgekit.build_matrix.ray import ray_module

        ray_module()  # not installed: exit 2 before any build
    return run_matrix(loaded, Path(out) if out is not None else Path("dist") / loaded.source.stem, jobs, progress,
                      resume, ray, None if baseline is None else Path(baseline), watch)


def run_matrix(matrix: Matrix, out: Path, jobs: int | None = None,
               progress: Callable[[str], None] | None = None, resume: bool = False,
               ray: str | None = None, baseline: Path | None = None, watch: Watch | None = None) -> MatrixResult:
    """Build every cell (at most `jobs` at once), write OUT/matrix.json, return the cells and the exit code: 1 if
    any cell gave 1, else 2 if any gave 2, else 3 if any gave 3, else 0. A failing cell never stops the others.
    OUT is locked for the run (a second matrix on it fails at once, naming the first)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder", hint="give a folder for the matrix's bundles")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise outdir.user_os_error(exc, f"creating {out}") from None
    with outdir.out_lock(out, "matrix"):
        return _run_locked(matrix, out, jobs, progress, resume, ray, baseline, watch)


def _run_locked(matrix: Matrix, out: Path, jobs: int | None, progress: Callable[[str], None] | None, resume: bool,
                ray: str | None, baseline: Path | None, watch: Watch | None) -> MatrixResult:
    budget = default_budget(jobs)
    say = progress or (lambda line: None)
    where = (f"up to {budget.jobs} at a time{'' if budget.fixed else ' as memory allows'}" if ray is None else
             "as Ray tasks on a local Ray runtime" if ray == "local" else f"as Ray tasks on the cluster at {ray}")
    say(f"matrix {matrix.source.name}: {len(matrix.cells)} cells, {where}, bundles under {out}")
    children = _Children()
    hashes: dict[str, str] = {}
    files: dict[str, str] = {}  # path -> sha256, each file read once
    for cell in matrix.cells:
        hashes[cell.bundle] = inputs_hash(cell, out, files)
    done = {cell.bundle: row for cell in matrix.cells if resume and (row := _resumed(cell, out, hashes[cell.bundle],
                                                                                      say))}
    watch = watch or (lambda event, cell, row=None: None)
    for cell in matrix.cells:
        watch("done" if cell.bundle in done else "queued", cell, done.get(cell.bundle))
    if done:
        say(f"--resume: {len(done)} of {len(matrix.cells)} cells already built from the same inputs, kept")
    if ray is not None:
        _on_ray(matrix, out, ray, (hashes, files), done, say, watch)
        return _finish(matrix, out, done, say, baseline)

    def build(cell: Cell) -> dict | None:
        watch("running", cell)
        return _build(cell, out, children, hashes[cell.bundle], files)

    def finished(cell: Cell, row: dict) -> None:
        done[cell.bundle] = row
        watch("done", cell, row)
        say(f"[{len(done)}/{len(matrix.cells)}] {_line(row)}")

    todo = [cell for cell in matrix.cells if cell.bundle not in done]
    run_pool(todo, budget, build, (lambda: children.stopped, children.stop), finished)
    if budget.measured:
        peaks = ", ".join(f"{model} {peak:,} MB" for model, peak in budget.measured.items())
        say(f"memory: cells peaked at {peaks}; at most {budget.most_at_once} built at once "
            f"({budget.memory_mb:,} MB available{', --jobs fixed' if budget.fixed else ''})")
    return _finish(matrix, out, done, say, baseline)


def _finish(matrix: Matrix, out: Path, done: dict[str, dict], say, baseline: Path | None) -> MatrixResult:
    cells = [done[cell.bundle] for cell in matrix.cells]
    built = [c for c in cells if not c.get("resumed") and c["bundle"]]
    counts = {step: sum(step in c["reused_steps"] for c in built) for step in REUSABLE}
    say(f"step cache ({out / STEPS}): of {len(built)} built cells, "
        + ", ".join(f"{counts[s]} reused the {s}" for s in REUSABLE))
    code = aggregate([c["exit_code"] for c in cells])
    gate = None
    if baseline is not None:
        cells, gate = _against(cells, out, baseline, say)
        if gate["regressed"] and code == 0:
            code = 3
    written = {"schema": SCHEMA_ID, "matrix": str(matrix.source), "axes": matrix.axes, "exit_code": code,
               "baseline": gate, "cells": cells}
    validate_matrix(written)
    outdir.write_files({out / "matrix.json": json.dumps(written, indent=2) + "\n",
                        out / "matrix.html": matrix_html(written)})
    return MatrixResult(out, cells, code)


def _against(cells: list[dict], out: Path, baseline: Path, say) -> tuple[list[dict], dict]:
    """Each cell with a bundle here and in `baseline`: `edgekit diff` (default thresholds) in its row's
    `baseline`; the gate's summary for matrix.json."""
    from edgekit.bundle.diff import diff_bundles
    from edgekit.errors import EdgekitError

    rows, regressed, missing = [], [], []
    for cell in cells:
        old = baseline / cell["bundle"] if cell["bundle"] else None
        if old is None or not (old / "report.json").is_file():
            missing.append(f"{cell['model']}/{cell['name']}")
            rows.append({**cell, "baseline": None})
            continue
        try:
            result = diff_bundles(old, out / cell["bundle"])
            found = result["regressions"]
        except EdgekitError as exc:  # a baseline bundle that does not verify is no baseline to pass
            found = [f"the baseline bundle {old} is damaged or not a bundle: {exc}"]
        if found:
            regressed.append(cell["bundle"])
            say(f"regressed against {baseline}: {cell['bundle']}: {'; '.join(found)}")
        rows.append({**cell, "baseline": {"passed": not found, "regressions": found}})
    say(f"release gate against {baseline}: {len(regressed)} of {len(rows) - len(missing)} compared cells regressed"
        + (f", {len(missing)} without a baseline bundle" if missing else ""))
    return rows, {"out": str(baseline), "regressed": regressed, "missing": missing}


def validate_matrix(written: dict) -> None:
    """Raise jsonschema.ValidationError when matrix.json breaks its schema (edgekit/schema/matrix.schema.json)."""
    import jsonschema

    jsonschema.validate(written, json.loads(SCHEMA_PATH.read_text()))


def _on_ray(matrix: Matrix, out: Path, ray: str, known: tuple[dict[str, str], dict[str, str]],
            done: dict[str, dict], say, watch: Watch) -> None:
    """The cells not `done` as Ray tasks (edgekit/build_matrix/ray.py); each row into `done` as it comes back."""
    from edgekit.build_matrix.ray import run_on_ray, unpack_bundle

    def finish(cell: Cell, code: int, archive: bytes | None, log_text: str, seconds: float) -> dict:
        log = out / cell.model.name / f"{cell.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(log_text)
        _stamp(cell, out).unlink(missing_ok=True)
        if archive is not None and code in (0, 3):
            try:
                unpack_bundle(archive, out / cell.bundle)
            except (tarfile.TarError, OSError) as exc:  # a link or a path out of the folder: refused, not followed
                log.write_text(f"{log_text}\nerror: the bundle that came back from Ray was refused: {exc}\n")
                return _row(cell, 1, None, log, seconds)
        return _verdict(cell, out, code, archive is not None, (known[0][cell.bundle], known[1]), log, seconds)

    cells = {cell.bundle: cell for cell in matrix.cells}

    def record(row: dict) -> None:
        done[f"{row['model']}/{row['name']}"] = row
        watch("done", cells[f"{row['model']}/{row['name']}"], row)
        say(f"[{len(done)}/{len(matrix.cells)}] {_line(row)}")

    todo = [cell for cell in matrix.cells if cell.bundle not in done]
    for cell in todo:
        watch("submitted", cell)
    run_on_ray(todo, out, None if ray == "local" else ray, cell_command, finish, record, CELL_MEMORY)


def aggregate(codes: list[int]) -> int:
    for code in (1, 2, 3):
        if code in codes:
            return code
    return 0 if all(c == 0 for c in codes) else 1  # a signal (130, 143) or an unknown code is a failure


def cell_command(cell: Cell, out: Path) -> list[str]:
    """The `edgekit build` command line of one cell."""
    model = cell.model
    command = [sys.executable, "-P", "-m", "edgekit.cli", "build", model.model, "--out", str(out / cell.bundle),
               "--force"]  # -P: nothing in the working directory stands in for an installed module
    for key, value in [("calibration", model.calibration), ("eval", model.eval), *model.settings.items(),
                       *cell.axes.items()]:
        if value is not None:
            command += [f"--{key.replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, list)
                        else str(value)]
    return command


class _Children:
    """The running builds; after stop() none starts and every running one has been sent SIGTERM."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopped = False

    def run(self, command: list[str], stderr, env: dict[str, str] | None = None) -> int:
        with self._lock:
            if self._stopped:
                return 130
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
            self._running.add(child)
        try:
            return child.wait()
        finally:
            with self._lock:
                self._running.discard(child)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            running = list(self._running)
        for child in running:
            child.terminate()  # the build removes its staging and work folders, stops its own children
        for child in running:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()


def _build(cell: Cell, out: Path, children: _Children, digest: str, files: dict[str, str]) -> dict | None:
    if children.stopped:
        return None
    start = time.perf_counter()
    log = out / cell.model.name / f"{cell.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    _stamp(cell, out).unlink(missing_ok=True)
    with open(log, "w") as stderr:
        code = children.run(cell_command(cell, out), stderr, {**os.environ, step_cache.ENV: str(out / STEPS)})
    return _verdict(cell, out, code, True, (digest, files), log, time.perf_counter() - start)


def _verdict(cell: Cell, out: Path, code: int, written: bool, inputs: tuple[str, dict[str, str]], log: Path,
             seconds: float) -> dict:
    """The cell's row, from the report of the bundle its build `written` (exit 0 or 3); a complete bundle whose
    manifest names the driver's model and data (their sha256) gets its inputs stamp, so --resume may keep it, and
    one built from other files is removed and its cell fails (exit 2)."""
    digest, files = inputs
    report = _report(out / cell.bundle / "report.json") if written and code in (0, 3) else None
    if report is not None:
        other = _other_inputs(cell, out / cell.bundle, files)
        if other is not None:
            shutil.rmtree(out / cell.bundle, ignore_errors=True)
            with open(log, "a") as handle:
                handle.write(f"error: {other}: the bundle was removed\n")
            return _row(cell, 2, None, log, seconds)
        _stamp(cell, out).write_text(digest)
    return _row(cell, code, report, log, seconds)


def _other_inputs(cell: Cell, bundle: Path, files: dict[str, str]) -> str | None:
    """What the bundle's manifest says it was built from that is not the driver's file (by sha256), or None. A
    model is compared by its file (an ONNX model's hash also covers its external data: not compared here), data by
    the file it was read from (an image folder is passed as a path, not compared)."""
    manifest = _report(bundle / "manifest.json") or {}
    lineage = manifest.get("model") or {}
    data = manifest.get("data") or {}
    found = {"model": lineage.get("sha256") if lineage.get("kind") in ("exported_program", "torchscript") else None,
             "calibration": (data.get("calibration") or {}).get("file_sha256"),
             "eval": (data.get("eval") or {}).get("file_sha256") if cell.model.eval else None}
    for key, digest in found.items():
        sent = files.get(getattr(cell.model, key) or "")
        if digest is not None and sent is not None and digest != sent:
            return f"the bundle's {key} has sha256 {digest[:16]}..., not the driver's {sent[:16]}..."
    if not manifest:
        return "the bundle has no readable manifest.json"
    return None


def inputs_hash(cell: Cell, out: Path, known: dict[str, str] | None = None) -> str:
    """sha256 of what makes a cell's bundle: its command, the contents of its files and folders (an image folder),
    the installed tools. `known`: sha256 already computed, by path."""
    import hashlib

    known = {} if known is None else known
    command = cell_command(cell, out)[4:]
    for arg in command:
        if arg not in known and Path(arg).exists() and arg != str(out / cell.bundle):
            try:
                known[arg] = _tree_sha256(Path(arg))
            except OSError as exc:  # a file removed or changed while it was read
                raise ConfigError(f"{arg} changed while the matrix read it ({exc.strerror or exc}: {exc.filename})",
                                  hint="let whatever writes it finish, then run the matrix again") from None
    files = {arg: known[arg] for arg in command if arg in known}
    text = json.dumps({"command": command, "files": files, "versions": _versions()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _tree_sha256(path: Path) -> str:
    """sha256 of a file's bytes (as the manifest records it), or of a folder's file names and bytes."""
    import hashlib

    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if item.is_file():
            if path.is_dir():
                digest.update(str(item.relative_to(path)).encode())
            with open(item, "rb") as handle:
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


def _resumed(cell: Cell, out: Path, digest: str, say: Callable[[str], None]) -> dict | None:
    """The row of a bundle already built from the same inputs that verifies as `edgekit check` verifies it (every
    file's sha256, nothing unlisted, report.json against its schema); None when it must be built, and the run says
    why when a bundle is there but is not kept."""
    from edgekit.bundle.check import open_bundle
    from edgekit.bundle.report import passed

    stamp, bundle = _stamp(cell, out), out / cell.bundle
    if not (stamp.is_file() and (bundle / "report.json").is_file()):
        return None
    try:
        if stamp.read_bytes().decode("ascii", errors="replace").strip() != digest:
            return None
        report = open_bundle(bundle).report
    except (EdgekitError, OSError) as exc:
        say(f"--resume: {cell.bundle} is rebuilt: {exc}")
        return None
    log = out / cell.model.name / f"{cell.name}.log"
    return {**_row(cell, 0 if passed(report) else 3, report, log, 0.0), "resumed": True}


def _report(path: Path) -> dict | None:
    """The bundle's report.json (not the build's stdout, which a model's own prints could garble)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def _row(cell: Cell, code: int, report: dict | None, log: Path, seconds: float) -> dict:
    drift = (report or {}).get("drift")
    outputs = [o["sqnr_db"] for o in (drift or {}).get("outputs", []) if o.get("sqnr_db") is not None]
    resources = (report or {}).get("resources") or {}
    steps = list(resources.get("reused_steps") or [])
    return {"model": cell.model.name, "name": cell.name, **cell.axes, "bundle": cell.bundle if report else None,
            "exit_code": code, "passed": code == 0,
            "drift": None if drift is None else {
                "accuracy_drop": drift["accuracy_drop"], "top1_agreement": drift["top1_agreement"],
                "sqnr_db": min(outputs) if outputs else None, "passed": drift["passed"]},
            "size": None if report is None else {"device_bytes": report["size"]["device_bytes"],
                                                 "device_gzip_bytes": report["size"]["device_gzip_bytes"]},
            "latency_ms": None if report is None else report["latency_ms"].get("host"),
            "reused": bool(steps), "reused_steps": steps, "peak_rss_mb": resources.get("peak_rss_mb"),
            "seconds": round(seconds, 1), "error": None if report else _error(log), "resumed": False}


def _error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return next((line for line in reversed(lines) if line.startswith("error")), lines[-1] if lines else "no output")


def _line(row: dict) -> str:
    drift = row["drift"] or {}
    if row["exit_code"] in (0, 3):
        verdict = "passed" if row["passed"] else "drift over a threshold"
        drop, size = drift.get("accuracy_drop"), (row["size"] or {}).get("device_bytes")
        return (f"{row['model']}/{row['name']}: exit {row['exit_code']} ({verdict}), drop "
                f"{'n/a' if drop is None else f'{drop:.2f}'}, {'n/a' if size is None else f'{size:,}'} bytes, "
                f"{row['seconds']:.1f} s")
    return f"{row['model']}/{row['name']}: exit {row['exit_code']}: {row['error']}"
