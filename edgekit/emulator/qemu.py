"""Rootless ARM64 user-mode emulator: set it up once into a cache folder, then run TFLite models in it.

The emulator is QEMU 10's qemu-aarch64 running Debian's arm64 python3.11 with aarch64 wheels of numpy and
LiteRT (ai-edge-litert): the same LiteRT kernels an Android arm64 app uses, with the default XNNPACK delegate.
INT8 results are bit-exact with an x86 host run of the same model; the emulator tells what an ARM64 device
computes, not how fast (it is 100-400x slower than the host).

    setup()        build the cache (~150 MB, seconds to a minute), idempotent, safe to run twice at once
    run_model()   one emulator process runs N samples, one at a time
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgekit.emulator import setup as build
from edgekit.emulator.worker import INPUT_ERROR_EXIT, INPUT_ERROR_PREFIX
from edgekit.errors import ConfigError, DataError, EmulatorError, ModelError
from edgekit.utils.children import run_child

MARKER = "ready.json"
MARKER_FORMAT = 1
LOCK = ".lock"
WORKER = Path(__file__).with_name("worker.py")
SETUP_HINT = "run `edgekit emulator setup`"
REPAIR_HINT = "run `edgekit emulator setup --force` to rebuild the emulator"


def default_root() -> Path:
    """$EDGEKIT_CACHE/emulator, else $XDG_CACHE_HOME/edgekit/emulator, else ~/.cache/edgekit/emulator."""
    if os.environ.get("EDGEKIT_CACHE"):
        return Path(os.environ["EDGEKIT_CACHE"]).expanduser() / "emulator"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "edgekit" / "emulator"


def is_ready(root: Path | None = None) -> bool:
    """True when a verified setup finished at `root` (reads its marker file; runs nothing)."""
    return _read_marker(Path(root or default_root())) is not None


def status(root: Path | None = None) -> dict:
    """Where the emulator is, whether it is ready, its size and the versions that were verified."""
    root = Path(root or default_root())
    marker = _read_marker(root) or {}
    return {
        "ready": bool(marker),
        "root": str(root),
        "size_bytes": _tree_size(root),
        "qemu": marker.get("qemu"),
        "python": marker.get("python"),
        "litert": marker.get("litert"),
        "onnxruntime": marker.get("onnxruntime"),
        "openvino": marker.get("openvino"),
    }


def setup(root: Path | None = None, progress: Callable[[str], None] = print, force: bool = False) -> dict:
    """Build and verify the emulator at `root`; does nothing when it is ready already (unless `force`).

    Holds an exclusive lock on ROOT/.lock: a second setup at once waits, then finds it ready. The build goes
    into a staging folder inside ROOT, is verified by running assets/tiny.tflite, and only then replaces the
    old files; the marker that makes it ready is written last. Returns status(), `changed` and `timings_s`.
    """
    root = Path(root or default_root())
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, exclusive=True, progress=progress):
        if not force and is_ready(root):
            progress(f"ARM64 emulator already set up at {root}")
            return {"changed": False, "timings_s": {}, **status(root)}
        build.check_host()
        progress(f"setting up the ARM64 emulator at {root}")
        started = time.monotonic()
        timings = {**_build_verified(root, progress), "total": round(time.monotonic() - started, 2)}
        result = {"changed": True, "timings_s": timings, **status(root)}
    progress(
        f"ARM64 emulator ready at {root} ({result['size_bytes'] / 2**20:.0f} MiB, {timings['total']:.1f} s)"
    )
    return result


def run_model(
    model_path: Path,
    inputs: dict[str, np.ndarray],
    *,
    cpu: str = "cortex-a76",
    num_threads: int = 1,
    timeout_s: float = 600,
    root: Path | None = None,
) -> dict[str, np.ndarray]:
    """Run a model (.tflite in LiteRT; .ort/.onnx in onnxruntime; .xml in OpenVINO) on N samples in the emulator,
    one sample (batch 1) at a time, in one process.

    `inputs` are keyed by input tensor name, each [N, *tensor shape without batch] in the tensor's dtype (the
    caller quantises). Returns raw outputs keyed by output tensor name, each stacked to [N, ...].
    """
    root = Path(root or default_root())
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"model file {model_path} does not exist",
                         hint="pass the path of a .tflite, .ort, .onnx or .xml file")
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ConfigError(f"num_threads must be an integer >= 1, got {num_threads!r}")
    _check_inputs(inputs)
    with _lock(root, exclusive=False):
        if not is_ready(root):
            raise EmulatorError(f"the ARM64 emulator is not set up at {root}", hint=SETUP_HINT)
        outputs, _ = _run_worker(root, model_path, inputs, cpu, num_threads, timeout_s)
    return outputs


def run_python(script: Path, args: list[str], *, cwd: Path | None = None, cpu: str = "cortex-a76",
               timeout_s: float = 600, root: Path | None = None) -> subprocess.CompletedProcess:
    """Run a numpy/LiteRT-only Python script (e.g. a bundle's check.py) in the emulator, as on an ARM64 board."""
    root = Path(root or default_root())
    with _lock(root, exclusive=False):
        if not is_ready(root):
            raise EmulatorError(f"the ARM64 emulator is not set up at {root}", hint=SETUP_HINT)
        guest = [root / build.QEMU_BINARY, "-L", root / build.SYSROOT, root / build.GUEST_PYTHON, "-s", script]
        command = [str(part) for part in guest] + [str(a) for a in args]
        return _run_guest(command, _guest_env(root, cpu), timeout_s, cwd)


def _build_verified(root: Path, progress: Callable[[str], None]) -> dict[str, float]:
    """Build into a fresh staging folder, verify it, then move it into place and mark it ready."""
    for stale in root.glob(".build-*"):  # left by a setup that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        timings = build.build(staging, progress)
        with build.stage("verify", progress, timings):
            marker = _verify(staging)
        (root / MARKER).unlink(missing_ok=True)
        for part in (build.QEMU_BINARY.parent, build.SYSROOT, build.SITE):
            shutil.rmtree(root / part, ignore_errors=True)
            (staging / part).rename(root / part)
        _write_marker(root, marker)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return timings


def _verify(staged: Path) -> dict:
    """Run the shipped tiny model in the staged emulator and check its output exactly; return the marker."""
    samples = (np.arange(24, dtype=np.float32).reshape(3, 8) % 7) - 3
    outputs, meta = _run_worker(staged, build.TINY_MODEL, {"x": samples}, "cortex-a76", 1, 300)
    expected = build.tiny_expected(samples)
    got = outputs.get("Identity")
    if got is None or got.shape != expected.shape or not np.array_equal(got, expected):
        raise EmulatorError(
            f"the emulator computed {got!r} for the verification model, expected {expected!r}",
            hint="report this as a bug with the output of `edgekit emulator status`",
        )
    return {
        "format": MARKER_FORMAT,
        "wheels": list(build.WHEELS),
        "qemu": _qemu_version(staged / build.QEMU_BINARY),
        **{key: meta.get(key) for key in ("python", "numpy", "litert", "onnxruntime", "openvino")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _qemu_version(binary: Path) -> str | None:
    """'10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)' from `qemu-aarch64 --version`."""
    said = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return said.splitlines()[0].removeprefix("qemu-aarch64 version ").strip() if said.strip() else None


def _run_worker(
    root: Path, model: Path, inputs: dict[str, np.ndarray], cpu: str, num_threads: int, timeout_s: float
) -> tuple[dict[str, np.ndarray], dict]:
    """Run the worker script once under qemu-aarch64; return its outputs and what it measured."""
    with tempfile.TemporaryDirectory(prefix="edgekit-emulator-") as scratch_dir:
        scratch = Path(scratch_dir)
        # A copy of the worker, so the guest's sys.path[0] is this folder and not edgekit's package folder.
        worker = Path(shutil.copy(WORKER, scratch / "worker.py"))
        _write_named(scratch / "in.npz", inputs)
        guest = [root / build.QEMU_BINARY, "-L", root / build.SYSROOT, root / build.GUEST_PYTHON, "-s"]
        arguments = [worker, model.resolve(), scratch / "in.npz", scratch / "out.npz", num_threads]
        done = _run_guest([str(part) for part in guest + arguments], _guest_env(root, cpu), timeout_s)
        _raise_for_failure(done, wrote_outputs=(scratch / "out.npz").is_file())
        return _read_named(scratch / "out.npz")


def _raise_for_failure(done: subprocess.CompletedProcess, wrote_outputs: bool) -> None:
    """Inputs that do not fit the model are the caller's DataError; any other failure is an EmulatorError."""
    if done.returncode == INPUT_ERROR_EXIT and INPUT_ERROR_PREFIX in done.stderr:
        message = done.stderr.rsplit(INPUT_ERROR_PREFIX, 1)[1].strip()
        raise DataError(message, hint="key inputs by TFLite input name, shaped [N, *shape without batch]")
    if done.returncode < 0:
        raise EmulatorError(
            f"the ARM64 emulator was killed by signal {-done.returncode}:\n{_tail(done.stderr)}",
            hint="rerun; if it happens again, report it with this output",
        )
    if done.returncode > 0 or not wrote_outputs:
        raise EmulatorError(
            f"the ARM64 emulator failed (exit code {done.returncode}):\n{_tail(done.stderr)}",
            hint="check the model file and the cpu name (e.g. cortex-a76, cortex-a55); if the emulator "
            f"itself is broken, {REPAIR_HINT}",
        )


def _run_guest(
    command: list[str], env: dict[str, str], timeout_s: float, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    try:
        return run_child(  # its own process group, killed with the build, dead with its parent
            command, timeout_s, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd
        )
    except subprocess.TimeoutExpired as exc:
        raise EmulatorError(
            f"the ARM64 emulator run timed out after {timeout_s:g} s",
            hint="raise timeout_s or run fewer samples in the emulator (--emulator-samples)",
        ) from exc
    except OSError as exc:
        raise EmulatorError(
            f"cannot start the emulator binary {command[0]}: {exc}", hint=REPAIR_HINT
        ) from exc


def _guest_env(root: Path, cpu: str) -> dict[str, str]:
    """The host environment less the settings meant for the host's own python, loader and CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "QEMU_", "OPENBLAS_", "LD_"))}
    return {**env, "QEMU_CPU": cpu, "PYTHONPATH": str(root / build.SITE)}


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(nothing on stderr)"


def _check_inputs(inputs: dict[str, np.ndarray]) -> None:
    """At least one input, every one an array with the same number of samples N >= 1."""
    counts = {name: np.shape(array)[0] if np.ndim(array) else 0 for name, array in inputs.items()}
    if not counts or min(counts.values()) < 1 or len(set(counts.values())) > 1:
        raise DataError(
            f"inputs need the same number of samples (>= 1) per input, got {counts}",
            hint="pass {input name: array of shape [N, *tensor shape without batch]}",
        )


def _write_named(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tensors = {f"t{i}": np.asarray(array) for i, array in enumerate(arrays.values())}
    np.savez(path, __names__=np.array(list(arrays)), **tensors)


def _read_named(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path) as stored:
        arrays = {str(name): stored[f"t{i}"] for i, name in enumerate(stored["__names__"])}
        return arrays, json.loads(str(stored["__meta__"]))


def _read_marker(root: Path) -> dict | None:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    if marker.get("wheels") != list(build.WHEELS):  # set up for another LiteRT: rebuild to stay bit-exact
        return None
    return marker if (root / build.QEMU_BINARY).is_file() and (root / build.GUEST_PYTHON).is_file() else None


def _write_marker(root: Path, marker: dict) -> None:
    partial = root / f"{MARKER}.partial"
    partial.write_text(json.dumps(marker, indent=2))
    partial.replace(root / MARKER)


def _tree_size(root: Path) -> int:
    if not root.is_dir():
        return 0
    return sum(entry.lstat().st_size for entry in root.rglob("*") if not entry.is_dir() or entry.is_symlink())


@contextmanager
def _lock(root: Path, exclusive: bool, progress: Callable[[str], None] | None = None) -> Iterator[None]:
    """flock ROOT/.lock: setup holds it alone, runs share it, so a rebuild never pulls files from a run."""
    import fcntl  # POSIX only; imported here so default_root() and status() work everywhere

    if not root.is_dir():  # nothing to protect; run_model then reports that it is not set up
        yield
        return
    try:
        handle = open(root / LOCK, "a")  # noqa: SIM115 (closed below, after the lock is released)
    except OSError:
        if exclusive:
            raise
        yield  # a read-only shared cache: nobody can rebuild it under us
        return
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with handle:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                progress(f"waiting for another emulator setup at {root} to finish")
            fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
