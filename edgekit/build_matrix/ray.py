"""Running a build matrix on Ray: each cell one Ray task (1 CPU and CELL_MEMORY declared), the same `edgekit build`
command as the local pool, on whichever node Ray picks.

`--ray` alone starts a local Ray runtime; `--ray ADDRESS` joins a cluster. The cell's files (model, calibration
and eval data) go into Ray's object store once each, by content hash, and a worker writes them under its own
private folder (<temp>/edgekit-ray-<uid>, mode 0700, refused when anyone else owns it or can write it) as
<sha256>/<name> (the same file name, so the bundle's model name is the same), hashing every copy before use: a
file there that is not the driver's fails the cell, never stands in for it; a folder (an image
folder) and a `module:factory` string are passed as they are (a path the nodes share, code the nodes have). The
worker builds into its own temp folder and sends the bundle back as a tar archive, which the driver unpacks into
OUT/<model>/<cell> only when the build wrote one: an existing bundle is never damaged by a failed cell. A worker
that dies loses only its cell: Ray runs it once more, then the cell is reported failed (exit 1).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgekit.build_matrix.file import Cell
from edgekit.errors import UnsupportedError
from edgekit.inputs.model import sha256_file
from edgekit.utils.outdir import private_problem

RETRIES = 1


def ray_module():
    """`import ray`, or exit 2 with the install hint."""
    try:
        import ray
    except ImportError:
        raise UnsupportedError("edgekit matrix --ray needs Ray, which is not installed",
                               hint="pip install 'edgekit[ray]', or drop --ray to build on this machine") from None
    return ray


def run_on_ray(cells: list[Cell], out: Path, address: str | None, command: Callable[[Cell, Path], list[str]],
               finish: Callable[[Cell, int, bytes | None, str, float], dict],
               report_row: Callable[[dict], None], memory: int) -> None:
    """Build `cells` as Ray tasks; `finish(cell, exit code, bundle tar or None, log text, seconds)` makes each row,
    handed to `report_row` as the cells finish. Each row gains `ray`: `queued_s` (submitted until a worker took
    it), `build_s` (the build on the worker) and `overhead_s` (the rest: shipping files, starting the build,
    sending and unpacking the bundle)."""
    ray = ray_module()
    started = not ray.is_initialized()
    pending: dict = {}  # object ref -> (cell, submitted at)
    if started:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count() or 1}))
    try:
        shipped: dict[str, object] = {}  # path -> object ref of its bytes, each file put once
        task = ray.remote(_cell_task).options(num_cpus=1, memory=memory, max_retries=RETRIES,
                                              retry_exceptions=False)
        for cell in cells:
            argv = command(cell, Path("/edgekit-staging"))
            files = {arg: _put(ray, Path(arg), shipped) for arg in _shipped_args(cell)}
            pending[task.remote(argv, files, str(Path("/edgekit-staging") / cell.bundle), os.getcwd())] = \
                (cell, time.time())
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell, start = pending.pop(ready[0])
            try:
                code, archive, log, built, began = ray.get(ready[0])
            except Exception as exc:  # the worker died twice, or Ray lost the task
                code, archive, log, built, began = 1, None, f"error: the Ray worker building this cell failed: {exc}", \
                    0.0, start
            row = finish(cell, code, archive, log, time.time() - start)
            queued = max(0.0, began - start)
            report_row({**row, "ray": {"queued_s": round(queued, 2), "build_s": round(built, 2),
                                       "overhead_s": round(time.time() - start - queued - built, 2)}})
    except BaseException:
        for ref in list(pending):
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def _shipped_args(cell: Cell) -> list[str]:
    """The cell's arguments that are files to send (as cell_command writes them): the model (a file, not
    `module:factory`), the calibration and eval data (files, not folders)."""
    model = cell.model
    return [value for value in (model.model, model.calibration, model.eval) if value and Path(value).is_file()]


def _put(ray, path: Path, shipped: dict) -> tuple[str, str, object]:
    """(sha256, file name, object ref): the file's bytes in the object store, once per path."""
    import hashlib

    key = str(path.resolve())
    if key not in shipped:
        data = path.read_bytes()
        shipped[key] = (hashlib.sha256(data).hexdigest(), path.name, ray.put(data))
    return shipped[key]


def _cell_task(argv: list[str], files: dict, staging_bundle: str,
               cwd: str) -> tuple[int, bytes | None, str, float, float]:
    """On a Ray worker: the cell's files by hash under the temp folder, the build (this node's Python, in the
    driver's folder when the node has it), its bundle as a tar archive."""
    import sys

    import ray

    began = time.time()
    try:
        root = node_folder(Path(tempfile.gettempdir()))
        local = {arg: str(_local_copy(root, digest, name, lambda ref=ref: ray.get(ref)))
                 for arg, (digest, name, ref) in files.items()}
    except UnsafeNodeFile as exc:  # this cell fails, with the reason; nothing planted is ever used
        return 2, None, f"error: {exc}\n", 0.0, began
    with tempfile.TemporaryDirectory(prefix="edgekit-cell-") as work:
        bundle = Path(work) / "bundle"
        command = [sys.executable, *(local.get(a, str(bundle) if a == staging_bundle else a) for a in argv[1:])]
        here = cwd if Path(cwd).is_dir() else None  # `module:factory` found there, after everything installed
        env = {**os.environ, "EDGEKIT_STEP_CACHE": str(root / "steps")}  # shared by this user's cells on the node
        start = time.time()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=here,
                              env=env)
        built = time.time() - start
        archive = None
        if (bundle / "report.json").is_file():
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                tar.add(bundle, arcname=".")
            archive = buffer.getvalue()
        return done.returncode, archive, done.stderr, built, began


class UnsafeNodeFile(Exception):
    """A file or folder on a Ray node that is not the one the driver sent, or that someone else could change."""


def node_folder(temp: Path) -> Path:
    """This user's folder for Ray cells under the node's temp folder, created private (0700); refused when it is
    a link, not a folder, owned by another user, or writable by group or others."""
    root = temp / f"edgekit-ray-{os.getuid()}"
    problem = private_problem(root)
    if problem is not None:
        raise UnsafeNodeFile(f"on this Ray node, {problem}: refused")
    return root


def _local_copy(root: Path, digest: str, name: str, fetch: Callable[[], bytes]) -> Path:
    """The driver's file at root/<sha256>/<name>: a copy already there is used only when its bytes hash to
    `digest`; a fresh copy is hashed before it is put in place."""
    import hashlib

    path = root / digest / name
    if path.is_file() and not path.is_symlink():
        if sha256_file(path) == digest:
            return path
        raise UnsafeNodeFile(f"{path} on this Ray node is not the file the driver sent (sha256 differs): refused")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = fetch()
    if hashlib.sha256(data).hexdigest() != digest:
        raise UnsafeNodeFile(f"{name} arrived with a sha256 other than the driver's: refused")
    partial = path.with_name(f".{name}.{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(path)
    return path


def unpack_bundle(archive: bytes, target: Path) -> None:
    """The tar archive of a bundle into `target`, through a staging folder (regular files and folders only, no
    path out of it); an existing bundle is replaced only once the new one is complete."""
    staging = target.with_name(f".{target.name}.incoming")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(staging, filter="data")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.replace(old)
    staging.replace(target)
    shutil.rmtree(old, ignore_errors=True)
