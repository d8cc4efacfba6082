"""ONNX -> TFLite with onnx2tf (float32, float16, INT8 with the user's calibration data), and I/O binding."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.cache import store as step_cache
from edgekit.config.target import Target
from edgekit.errors import ConversionError, ToolError, UnsupportedError
from edgekit.measure.mapping import channels_last, layout_candidates, match_outputs
from edgekit.routes.litert.runner import open_interpreter
from edgekit.runners.binding import Binding
from edgekit.transform.export import OnnxExport
from edgekit.utils.children import run_child

# onnx2tf fetches sample images for 3-channel 4-D inputs unless this file is in its working directory.
_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
WorkerRun = Callable[[Path, Path, float], int]  # (workdir, log, timeout_s) -> exit code
_SUFFIX = {"fp32": "float32", "fp16": "float16", ("int8", "float32"): "integer_quant",
           ("int8", "int8"): "full_integer_quant"}


@dataclass(frozen=True)
class TfliteFiles:
    float32: Path
    device: Path
    log: Path
    seconds: float
    converter: str = "onnx2tf"
    converter_version: str = ""
    reused: bool = False  # taken from the step cache (edgekit/cache/store.py), not converted again


def onnx2tf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnx2tf")
    except PackageNotFoundError as exc:
        raise ToolError("onnx2tf is not installed", hint="pip install 'edgekit[android]'") from exc


def check_inputs(inputs: tuple, precision: str) -> None:
    """onnx2tf's INT8 calibration feeds float32 arrays to every input: a model with integer inputs (token ids,
    masks) crashes inside it, so it is refused up front (exit 2)."""
    integer = [f"{spec.name} ({spec.dtype})" for spec in inputs if not spec.dtype.startswith("float")]
    if precision == "int8" and integer:
        raise UnsupportedError(f"onnx2tf's INT8 calibration feeds float32 to every input; this model has integer "
                               f"inputs: {', '.join(integer)}",
                               hint="use --converter litert-torch, or the onnxruntime, openvino or jetson targets, "
                                    "which pass integer inputs through unquantized")


def convert(export: OnnxExport, calibration: dict[str, np.ndarray], target: Target, io: str, workdir: Path,
            timeout_s: float = 1800.0, run_worker: WorkerRun | None = None) -> TfliteFiles:
    """Run onnx2tf in a subprocess; calibration arrays are in the model's layout and already normalised.

    `run_worker(workdir, log, timeout_s) -> exit code` runs workdir/spec.json instead of a fresh subprocess
    (the op conformance suite keeps one warm worker for many conversions)."""
    version = onnx2tf_version()
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(workdir / _SAMPLE_FILE, np.zeros((20, 128, 128, 3), np.float32))
    spec = {"onnx": str(export.path.resolve()), "out": str((workdir / "tflite").resolve()),
            "int8": target.precision == "int8", "calibration": _calibration_files(export, calibration, workdir)}
    (workdir / "spec.json").write_text(json.dumps(spec))
    start = time.perf_counter()
    log = workdir / "onnx2tf.log"
    cache_key = _cache_key(export, spec, version)
    reused = step_cache.fetch("onnx2tf", cache_key, workdir / "tflite")
    if reused:
        log.write_text(f"onnx2tf: reused the conversion of the same ONNX model and settings ({cache_key})\n")
    else:
        code = (run_worker or _run_worker)(workdir, log, timeout_s)
        if code != 0:
            raise _conversion_failure(log, code, export.path)
    seconds = time.perf_counter() - start
    stem = export.path.stem
    key = target.precision if target.precision != "int8" else ("int8", io)
    files = TfliteFiles(float32=workdir / "tflite" / f"{stem}_float32.tflite",
                        device=workdir / "tflite" / f"{stem}_{_SUFFIX[key]}.tflite",
                        log=log, seconds=seconds, converter_version=version, reused=reused)
    for path in (files.float32, files.device):
        if not path.is_file():
            raise ConversionError(f"onnx2tf finished without writing {path.name}: {_log_tail(log)}",
                                  hint=f"see the full log in {log}")
    if not reused:
        step_cache.store("onnx2tf", cache_key, sorted((workdir / "tflite").glob("*.tflite")))
    return files


def _cache_key(export: OnnxExport, spec: dict, version: str) -> str:
    """What onnx2tf's files depend on: the ONNX model (and its external data), INT8 or not, the calibration
    arrays when INT8, onnx2tf's version and edgekit's worker script."""
    model = export.path
    external = sorted(p for p in model.parent.glob(f"{model.name}.*") if p.is_file())
    parts = [version, WORKER_SCRIPT, model.name, model, *external, json.dumps(spec["int8"])]
    if spec["int8"]:
        parts += [Path(entry[1]) for entry in spec["calibration"]]
    return step_cache.digest(*parts)


def _calibration_files(export: OnnxExport, calibration: dict[str, np.ndarray], workdir: Path) -> list:
    """onnx2tf wants calibration data in its own (channels-last) layout; mean 0 and std 1 keep it as given."""
    entries = []
    for spec in export.inputs:
        array = calibration[spec.name]
        perm = channels_last(array.ndim)
        path = workdir / f"calib_{len(entries)}.npy"
        np.save(path, np.ascontiguousarray(array.transpose(perm) if perm else array, dtype=np.float32))
        entries.append([spec.name, str(path.resolve()), [0.0], [1.0]])
    return entries


def worker_env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # onnx2tf shells out to onnxsim from the same environment
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "TF_CPP_MIN_LOG_LEVEL": "2",
            "CUDA_VISIBLE_DEVICES": "-1", "PYTHONHASHSEED": "0"}


WORKER_SCRIPT = Path(__file__).with_name("onnx2tf_worker.py")


def _run_worker(workdir: Path, log: Path, timeout_s: float) -> int:
    # -P: the worker sits beside this module, whose name would shadow the real onnx2tf package
    command = [sys.executable, "-P", str(WORKER_SCRIPT), "spec.json"]
    with open(log, "w") as handle:
        try:
            done = run_child(command, timeout_s, cwd=workdir, stdout=handle, stderr=subprocess.STDOUT,
                             env=worker_env())
        except subprocess.TimeoutExpired as exc:
            raise ConversionError(f"onnx2tf did not finish within {timeout_s:.0f} s",
                                  hint=f"see {log}; a smaller calibration set shortens INT8 conversion") from exc
    return done.returncode


def _conversion_failure(log: Path, code: int = 1, onnx_path: Path | None = None) -> Exception:
    if code < 0 or code > 128:  # killed by a signal (a crash in TensorFlow's converter), not a Python error
        return _crash(log, abs(code) % 128, onnx_path)
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))  # onnx2tf colours its messages
    node = re.search(r"onnx_op_name: (\S+)", text)
    if node:  # onnx2tf says which node it failed on: name it, its op type, and the exception
        exception = re.findall(r"^\w*(?:Error|Exception): .*$", text, flags=re.MULTILINE)
        what = f": {exception[-1][:200]}" if exception else ""
        return UnsupportedError(f"onnx2tf cannot convert ONNX node {node.group(1)}"
                                f"{_op_type(onnx_path, node.group(1))}{what}",
                                hint=f"replace that operator in the model, or try --converter litert-torch; "
                                     f"full log in {log}")
    tail = _log_tail(log)
    lowered = tail.lower()
    if "not supported" in lowered or "notimplemented" in lowered or "unsupported" in lowered:
        return UnsupportedError(f"onnx2tf cannot convert this model: {tail}",
                                hint=f"replace the operator named above; full log in {log}")
    return ConversionError(f"onnx2tf failed: {tail}", hint=f"see the full log in {log}")


def _op_type(onnx_path: Path | None, node_name: str) -> str:
    import onnx

    if onnx_path is None:
        return ""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return next((f" ({node.op_type})" for node in graph.node if node.name == node_name), "")


def _crash(log: Path, number: int, onnx_path: Path | None) -> Exception:
    import signal

    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    stage = ("while quantizing to INT8 (the float32 model was written)"
             if any(log.parent.glob("tflite/*_float32.tflite")) else "while converting")
    recurrent = _recurrent_ops(onnx_path) if onnx_path else []
    held = f"; the model holds {', '.join(recurrent)}, which onnx2tf lowers to a TFLite WHILE loop" if recurrent else ""
    return UnsupportedError(f"onnx2tf crashed ({name}) {stage}{held}",
                            hint=f"build a float target (android-arm64-fp32/-fp16) or try --converter litert-torch; "
                                 f"full log in {log}")


def _recurrent_ops(onnx_path: Path) -> list[str]:
    import onnx

    types = {node.op_type for node in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    return sorted(types & {"LSTM", "GRU", "RNN", "Loop", "Scan"})


def _log_tail(log: Path, lines: int = 3) -> str:
    text = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    interesting = [t for t in text if "error" in t.lower() or "exception" in t.lower()] or text
    return " | ".join(interesting[-lines:])[:600]


def bind_inputs(path: Path, export: OnnxExport) -> list[Binding]:
    """Device inputs by name (onnx2tf keeps ONNX input names inside `serving_default_<name>:0`)."""
    details = open_interpreter(path).get_input_details()
    bindings = []
    for spec in export.inputs:
        index = _find_input(details, spec.name, len(export.inputs))
        detail = details[index]
        perms = layout_candidates(spec.shape, tuple(int(d) for d in detail["shape"]))
        if not perms:
            raise ConversionError(f"device input {detail['name']} has shape {list(detail['shape'])}, "
                                  f"not a layout of {list(spec.shape)}", hint="report this model to edgekit")
        bindings.append(_binding(spec.name, detail, index, perms[0]))
    return bindings


def _find_input(details: list[dict], name: str, count: int) -> int:
    for index, detail in enumerate(details):
        bare = detail["name"].removeprefix("serving_default_").split(":")[0]
        if bare == name:
            return index
    if count == 1 and len(details) == 1:
        return 0
    raise ConversionError(f"no device input named {name!r} among {[d['name'] for d in details]}",
                          hint="report this model to edgekit")


def bind_outputs(path: Path, inputs: list[Binding], samples: dict[str, np.ndarray],
                 reference: dict[str, np.ndarray]) -> tuple[list[Binding], dict[str, float]]:
    """Match device outputs to the reference's by shape and values over a few samples; returns bindings and errors."""
    interpreter = open_interpreter(path)
    details = interpreter.get_output_details()
    raw = _raw_outputs(interpreter, inputs, samples, details)
    matched = match_outputs(reference, raw)
    bindings = [_binding(name, details[index], index, perm) for name, (index, perm, _) in matched.items()]
    return bindings, {name: error for name, (_, _, error) in matched.items()}


def _raw_outputs(interpreter, inputs: list[Binding], samples: dict[str, np.ndarray],
                 details: list[dict]) -> dict[int, np.ndarray]:
    in_details = interpreter.get_input_details()
    count = len(next(iter(samples.values())))
    rows: dict[int, list[np.ndarray]] = {i: [] for i in range(len(details))}
    for k in range(count):
        for binding in inputs:
            interpreter.set_tensor(in_details[binding.device_index]["index"],
                                   binding.encode(samples[binding.model_name][k:k + 1]))
        interpreter.invoke()
        for i, detail in enumerate(details):
            rows[i].append(_binding("", detail, i, None).decode(interpreter.get_tensor(detail["index"])))
    return {i: np.concatenate(v) for i, v in rows.items()}


def _binding(model_name: str, detail: dict, index: int, perm: tuple[int, ...] | None) -> Binding:
    scale, zero_point = detail["quantization"]
    return Binding(model_name, detail["name"], index, perm, np.dtype(detail["dtype"]).name, float(scale),
                   int(zero_point))
