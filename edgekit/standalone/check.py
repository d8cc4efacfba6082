#!/usr/bin/env python3
"""Standalone on-device check of an edgekit bundle: numpy plus one runtime (LiteRT, onnxruntime, OpenVINO, ExecuTorch
or TensorRT), nothing else.

Copied into every bundle as check.py (edgekit imports the same file, so both compare alike). It runs the device
model on golden/inputs.npz and compares with golden/outputs.npz within the tolerances in manifest.json.

    python check.py [--model PATH] [--runtime auto|litert|onnxruntime|tensorrt|openvino|executorch]
                    [--expect-digest SHA256] [--json]

Everything in the bundle is data: manifest paths that are absolute, contain `..` or resolve outside the bundle are
refused, npz files are read without unpickling, and every file's sha256 is compared with manifest.json before the
device model is run. `--expect-digest` pins manifest.json itself (its sha256, printed by `edgekit build`).

Nothing is imported from the bundle's folder: run as a script, check.py takes that folder (Python's sys.path[0])
off the import path before its first import, so a `numpy.py` or `json.py` dropped beside it is never run. Every
file's sha256 is compared with manifest.json before any of them is parsed, a file the manifest does not list is
refused, and an npz member whose header declares more bytes than it holds is refused before anything is allocated.
Pin check.py itself by its sha256 (`edgekit build` prints it; `sha256sum check.py` on the device). Python 3.10+.

Exit codes: 0 pass, 3 drift beyond the manifest's tolerances, a file that is not the one measured (sha256) or a
file the manifest does not list, 2 error (missing or malformed file, no runtime).
"""

import sys  # built in: nothing in the bundle's folder can stand in for it

if __name__ == "__main__":  # the bundle's folder is data: drop it from the import path before any other import
    import os  # frozen, imported at start-up: never read from a folder

    _HERE = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import argparse
import hashlib
import json
import math
import platform
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

INTEGER_TYPES = ("int8", "uint8", "int16")
DEVICE_TYPES = ("float32", "float16", *INTEGER_TYPES, "int32", "int64")
RUNTIMES = ("litert", "onnxruntime", "tensorrt", "openvino", "executorch")
GOLDEN_INPUTS, GOLDEN_OUTPUTS = "golden/inputs.npz", "golden/outputs.npz"
SHA256 = re.compile(r"[0-9a-f]{64}")
EXPANSION, EXPANSION_FREE = 100, 64 << 20  # an npz member may expand 100x, or to 64 MiB whatever its ratio
UNLISTED_OK = ("manifest.json", "manifest.sha256")  # the manifest itself and its `sha256sum -c` line
MADE_ON_DEVICE = {"tensorrt": ("model.engine", "model.engine.source-sha256", "timing.cache")}  # build_engine's


class CheckError(Exception):
    """A problem that stops the check before any comparison (exit code 2)."""


class TamperedError(Exception):
    """A bundle file (or manifest.json itself) is not the one the build wrote and measured (exit code 3)."""


@dataclass(frozen=True)
class Verified:
    """A bundle whose manifest is well formed, whose files are all present and unmodified, golden data loaded."""

    manifest: dict
    model: Path
    inputs: dict
    golden: dict
    model_is_measured: bool = True  # False for a --model file other than the one the bundle measured


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle: Path, expect_digest: "str | None" = None) -> dict:
    """manifest.json parsed and checked key by key; with `expect_digest`, first compared byte for byte."""
    path = Path(bundle) / "manifest.json"
    if not path.is_file():
        raise CheckError("no manifest.json: the folder is not an edgekit bundle (run check.py inside one)")
    data = path.read_bytes()
    if expect_digest is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expect_digest.strip().lower():
            raise TamperedError(f"manifest.json sha256 is {digest}, not the expected {expect_digest.strip()}")
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise CheckError(f"manifest.json is not valid JSON: {exc}") from None
    except RecursionError:
        raise CheckError("manifest.json nests deeper than any manifest: refused") from None
    validate_manifest(manifest)
    return manifest


def _field(data: object, dotted: str, kinds: tuple, what: str, prefix: str = "") -> object:
    """The value at `dotted` (keys joined by dots) with one of `kinds`; CheckError naming the key otherwise."""
    value, name = data, f"{prefix}.{dotted}" if prefix else dotted
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise CheckError(f"manifest.json: missing key {name}")
        value = value[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise CheckError(f"manifest.json: {name} must be {what}, got {type(value).__name__} {str(value)[:40]!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise CheckError(f"manifest.json: {name} must be a finite number, got {value}")
    return value


def validate_manifest(manifest: object) -> None:
    """Every key check.py reads, with its type; a path must stay inside the bundle (checked again on use)."""
    files = _field(manifest, "files", (dict,), "an object of file name -> sha256")
    for name, digest in files.items():
        relative_path(name, f"files.{name}")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise CheckError(f"manifest.json: files.{name} must be a sha256 (64 hex digits)")
    relative_path(_field(manifest, "device.model", (str,), "a file name"), "device.model")
    runtime = _field(manifest, "device.runtime", (str,), "a runtime name")
    if runtime not in RUNTIMES:
        raise CheckError(f"manifest.json: device.runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    for side in ("inputs", "outputs"):
        bindings = _field(manifest, f"device.{side}", (list,), "a list of bindings")
        if not bindings:
            raise CheckError(f"manifest.json: device.{side} is empty")
        for k, binding in enumerate(bindings):
            _binding(binding, f"device.{side}.{k}")
    atol = _field(manifest, "device.tolerances.atol", (dict,), "an object of output name -> tolerance")
    outputs = {b["model_name"] for b in manifest["device"]["outputs"]}
    for name, value in atol.items():
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
            raise CheckError(f"manifest.json: device.tolerances.atol[{name!r}] must be a number >= 0")
        if name not in outputs:
            raise CheckError(f"manifest.json: device.tolerances.atol names {name!r}, which is not a device output")
    _field(manifest, "device.tolerances.class_output", (str, type(None)), "an output name or null")


def _binding(binding: object, where: str) -> None:
    if not isinstance(binding, dict):
        raise CheckError(f"manifest.json: {where} must be an object")
    for key in ("model_name", "device_name"):
        _field(binding, key, (str,), "a name", where)
    if _field(binding, "device_index", (int,), "an index", where) < 0:
        raise CheckError(f"manifest.json: {where}.device_index must be 0 or more")
    dtype = _field(binding, "dtype", (str,), "a dtype name", where)
    if dtype not in DEVICE_TYPES:
        raise CheckError(f"manifest.json: {where}.dtype {dtype!r} is not one of {', '.join(DEVICE_TYPES)}")
    perm = binding.get("to_device")
    if perm is not None and (not isinstance(perm, list) or any(type(p) is not int for p in perm)
                             or sorted(perm) != list(range(len(perm)))):
        raise CheckError(f"manifest.json: {where}.to_device must be null or a permutation such as [0, 2, 3, 1]")
    if dtype in INTEGER_TYPES:
        _field(binding, "zero_point", (int,), "an integer", where)
        if _field(binding, "scale", (int, float), "a number", where) <= 0:
            raise CheckError(f"manifest.json: {where}.scale must be positive")


def relative_path(name: object, key: str) -> str:
    """A manifest path as data: relative, forward slashes, no `..`, no drive; else CheckError (exit 2)."""
    if not isinstance(name, str) or not name:
        raise CheckError(f"manifest.json: {key} must be a non-empty file name")
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or "\\" in name or ":" in name or ".." in parts or "\x00" in name:
        raise CheckError(f"manifest.json: {key} = {name[:80]!r} is not a plain path inside the bundle "
                         "(absolute, drive, backslash or '..' refused)")
    return name


def bundle_file(bundle: Path, name: str, key: str) -> Path:
    """The file `name` inside `bundle`, refused when it resolves outside it (symlinks too) or is not a file."""
    root = Path(bundle).resolve()
    path = (root / relative_path(name, key)).resolve()
    if root not in path.parents:
        raise CheckError(f"manifest.json: {key} = {name!r} resolves outside the bundle")
    if not path.exists():
        raise CheckError(f"{name} ({key}) is missing from the bundle")
    if not path.is_file():
        raise CheckError(f"{name} ({key}) is not a file")
    return path


def npz_declared(path: Path, name: str) -> None:
    """Each member's .npy header read before numpy allocates anything: an array that declares more bytes than its
    member holds, or a member that is not an .npy, is refused (CheckError)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(member)
                    if dtype.hasobject:
                        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                        raise CheckError(f"{name}: key {key!r}: Object arrays cannot "
                                         "be loaded (npz files are read as numbers, never unpickled)")
                    declared = math.prod(shape) * dtype.itemsize
                    held = info.file_size - member.tell()
                if declared != held:
                    raise CheckError(f"{name}: member {info.filename!r} declares {shape} {dtype} ({declared:,} bytes) "
                                     f"but holds {max(held, 0):,} bytes")
                if info.file_size > max(EXPANSION * info.compress_size, EXPANSION_FREE):
                    raise CheckError(f"{name}: member {info.filename!r} expands {info.compress_size:,} compressed "
                                     f"bytes to {info.file_size:,} (over {EXPANSION}x: refused before reading)")
    except CheckError:
        raise
    except Exception as exc:  # zipfile and numpy raise many types for a damaged file
        raise CheckError(f"{name}: not a readable npz file: {_reason(exc)}") from None


def load_npz(path: Path, name: str) -> "dict[str, np.ndarray]":
    """Every array of an npz file, numbers only: never unpickled (object arrays are refused), headers bounded by
    what each member holds before anything is allocated."""
    npz_declared(path, name)
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as exc:
                    raise CheckError(f"{name}: key {key!r}: {_reason(exc)}") from None
    except CheckError:
        raise
    except Exception as exc:  # zipfile, zlib and numpy raise many types for a damaged file
        raise CheckError(f"{name}: not a readable npz file: {_reason(exc)}") from None
    for key, array in arrays.items():
        if array.dtype.kind not in "fiub" or array.ndim == 0:
            raise CheckError(f"{name}: key {key!r} holds {array.dtype} with shape {array.shape}, not numeric samples")
    return arrays


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _golden(bundle: Path, manifest: dict) -> "tuple[dict, dict]":
    """Golden inputs (one per model input) and outputs (reference/ and device/ per checked output), same length."""
    inputs = load_npz(bundle_file(bundle, GOLDEN_INPUTS, "golden inputs"), GOLDEN_INPUTS)
    golden = load_npz(bundle_file(bundle, GOLDEN_OUTPUTS, "golden outputs"), GOLDEN_OUTPUTS)
    device = manifest["device"]
    needed = [(GOLDEN_INPUTS, inputs, b["model_name"]) for b in device["inputs"]]
    needed += [(GOLDEN_OUTPUTS, golden, f"{kind}/{name}") for name in device["tolerances"]["atol"]
               for kind in ("reference", "device")]
    for name, arrays, key in needed:
        if key not in arrays:
            raise CheckError(f"{name}: missing key {key!r}")
    counts = {len(a) for _, arrays, key in needed for a in [arrays[key]]}
    if len(counts) != 1 or 0 in counts:
        raise CheckError(f"{GOLDEN_INPUTS} and {GOLDEN_OUTPUTS} must hold the same number (>= 1) of samples, "
                         f"found {sorted(counts)}")
    return inputs, golden


def _model_header(path: Path, runtime: str) -> None:
    """A TFLite file starts with its flatbuffer identifier, an OpenVINO IR with an XML declaration: a damaged
    header is an error, not a model to run."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if runtime == "litert" and head[4:8] != b"TFL3":
        raise CheckError(f"{path.name}: not a TFLite model (bad header {head[4:8]!r}, expected b'TFL3')")
    if runtime == "executorch" and head[4:8] != b"ET12":
        raise CheckError(f"{path.name}: not an ExecuTorch program (bad header {head[4:8]!r}, expected b'ET12')")
    if runtime == "openvino" and not head.startswith(b"<?xml"):
        raise CheckError(f"{path.name}: not an OpenVINO IR (bad header {head[:5]!r}, expected b'<?xml')")


def unlisted(bundle: Path, manifest: dict) -> "list[str]":
    """Files in the bundle folder that manifest.json does not list (besides itself and what the device's engine
    build writes): someone put them there after the build."""
    root = Path(bundle)
    allowed = {*manifest["files"], *UNLISTED_OK, *MADE_ON_DEVICE.get(manifest["device"]["runtime"], ())}
    return sorted(name for path in root.rglob("*") if not path.is_dir()
                  if (name := path.relative_to(root).as_posix()) not in allowed)


def verify_bundle(bundle: Path, model: "Path | None" = None, expect_digest: "str | None" = None,
                  also: "Callable[[dict], None] | None" = None) -> Verified:
    """Everything a check needs, verified before any file but manifest.json is parsed: manifest keys and paths,
    every listed file present and nothing unlisted beside them, every file's sha256 equal to manifest.json's
    (TamperedError); then the golden data (numeric, headers bounded), the model's header and `also(manifest)` (the
    caller's own checks, e.g. of report.json). A `model` the user points to instead of the bundle's is the user's
    choice: it runs, and the result says whether it is the measured one."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle, expect_digest)
    files, device = manifest["files"], manifest["device"]
    for name in (device["model"], GOLDEN_INPUTS, GOLDEN_OUTPUTS):
        if name not in files:
            raise CheckError(f"manifest.json: files has no sha256 for {name}")
    paths = {name: bundle_file(bundle, name, f"files.{name}") for name in files
             if model is None or name != device["model"]}
    model_path = Path(model) if model is not None else paths[device["model"]]
    if not model_path.is_file():
        raise CheckError(f"device model {model_path} not found (pass --model PATH)")
    extra = unlisted(bundle, manifest)
    if extra:
        raise TamperedError(f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}: not listed in manifest.json "
                            "(not written by the build; remove it, or get the bundle again from its source)")
    changed = [name for name, path in paths.items() if sha256(path) != files[name]]
    if changed:
        raise TamperedError(f"{', '.join(changed)} differ{'s' if len(changed) == 1 else ''} from the sha256 in "
                            "manifest.json: not the files this bundle was built and measured with")
    inputs, golden = _golden(bundle, manifest)
    _model_header(model_path, device["runtime"])
    if also is not None:
        also(manifest)
    measured = model is None or sha256(model_path) == files[device["model"]]
    return Verified(manifest, model_path, inputs, golden, measured)


def encode(binding: dict, array: np.ndarray) -> np.ndarray:
    """Model-layout float -> device tensor: transposed to the device layout, quantised for integer I/O."""
    perm = binding.get("to_device")
    array = array.transpose(perm) if perm else array
    if binding["dtype"] in INTEGER_TYPES:
        info = np.iinfo(binding["dtype"])
        array = np.clip(np.round(array / binding["scale"]) + binding["zero_point"], info.min, info.max)
    return np.ascontiguousarray(array, dtype=binding["dtype"])


def decode(binding: dict, array: np.ndarray) -> np.ndarray:
    """Device tensor -> model-layout float32."""
    if binding["dtype"] in INTEGER_TYPES:
        array = (array.astype(np.float32) - binding["zero_point"]) * np.float32(binding["scale"])
    perm = binding.get("to_device")
    array = array.transpose(np.argsort(perm)) if perm else array
    return np.ascontiguousarray(array, dtype=np.float32)


def open_litert(path: Path):
    for module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return __import__(module, fromlist=["Interpreter"]).Interpreter(model_path=str(path)), module
        except ImportError:
            continue
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise CheckError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from exc
    return tf.lite.Interpreter(model_path=str(path)), "tensorflow.lite"


def run_litert(path: Path, device: dict, inputs: "dict[str, np.ndarray]") -> "tuple[dict[str, np.ndarray], str]":
    interpreter, name = open_litert(path)
    interpreter.allocate_tensors()
    in_index = [interpreter.get_input_details()[b["device_index"]]["index"] for b in device["inputs"]]
    out_index = [interpreter.get_output_details()[b["device_index"]]["index"] for b in device["outputs"]]
    rows: dict[str, list[np.ndarray]] = {b["model_name"]: [] for b in device["outputs"]}
    for k in range(len(next(iter(inputs.values())))):
        for binding, index in zip(device["inputs"], in_index):
            interpreter.set_tensor(index, encode(binding, inputs[binding["model_name"]][k:k + 1]))
        interpreter.invoke()
        for binding, index in zip(device["outputs"], out_index):
            rows[binding["model_name"]].append(decode(binding, interpreter.get_tensor(index)))
    return {n: np.concatenate(v) for n, v in rows.items()}, name


def saturating_host(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """An x86-64 CPU without VNNI: onnxruntime's U8S8 integer kernels there add two products in a saturating 16-bit
    lane (vpmaddubsw; its quantization docs warn of it), results no ARM64 device gives. Measured here on the digits
    CNN: 20 dB from the same Q/DQ model computed as written (39 dB from PyTorch)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return not re.search(r"\b(avx512_vnni|avx_vnni)\b", flags)


def run_onnxruntime(path: Path, device: dict, inputs: "dict[str, np.ndarray]") -> "tuple[dict[str, np.ndarray], str]":
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise CheckError("no ONNX runtime: pip install onnxruntime (or run on the device with TensorRT)") from exc
    options, label = ort.SessionOptions(), "onnxruntime"
    written = path.with_name("model.onnx") if path.suffix == ".ort" else path  # the bundle's Q/DQ model beside it
    if device.get("precision") == "int8" and saturating_host() and written.is_file():  # as edgekit measured it
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        path, label = written, f"onnxruntime ({written.name} as written: x86-64 without VNNI)"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [b["model_name"] for b in device["outputs"]]
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for k in range(len(next(iter(inputs.values())))):
        feed = {b["device_name"]: encode(b, inputs[b["model_name"]][k:k + 1]) for b in device["inputs"]}
        for name, value in zip(names, session.run([b["device_name"] for b in device["outputs"]], feed)):
            rows[name].append(value.astype(np.float32))
    return {n: np.concatenate(v) for n, v in rows.items()}, label


def run_openvino(path: Path, device: dict, inputs: "dict[str, np.ndarray]") -> "tuple[dict[str, np.ndarray], str]":
    """The IR (model.xml, its weights in model.bin beside it) on OpenVINO's CPU plugin in float32 precision."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise CheckError("no OpenVINO runtime: pip install openvino") from exc
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    ports = {b["model_name"]: compiled.output(b["device_name"]) for b in device["outputs"]}
    rows: dict[str, list[np.ndarray]] = {name: [] for name in ports}
    for k in range(len(next(iter(inputs.values())))):
        result = request.infer({b["device_name"]: encode(b, inputs[b["model_name"]][k:k + 1])
                                for b in device["inputs"]})
        for name, port in ports.items():
            rows[name].append(np.array(result[port], dtype=np.float32, copy=True))
    return {n: np.concatenate(v) for n, v in rows.items()}, "openvino"


def run_executorch(path: Path, device: dict, inputs: "dict[str, np.ndarray]") -> "tuple[dict[str, np.ndarray], str]":
    """The .pte program's forward in ExecuTorch's runtime (its Python binding needs torch beside it)."""
    try:
        import torch
        from executorch.runtime import Runtime
    except ImportError as exc:
        raise CheckError("no ExecuTorch runtime: pip install executorch (with torch)") from exc
    method = Runtime.get().load_program(Path(path)).load_method("forward")
    rows: dict[str, list[np.ndarray]] = {b["model_name"]: [] for b in device["outputs"]}
    for k in range(len(next(iter(inputs.values())))):
        args = [torch.from_numpy(encode(b, inputs[b["model_name"]][k:k + 1])) for b in device["inputs"]]
        for binding, value in zip(device["outputs"], method.execute(args)):
            rows[binding["model_name"]].append(value.detach().numpy().astype(np.float32))
    return {n: np.concatenate(v) for n, v in rows.items()}, "executorch"


def engine_runner(script: Path):
    """run_engine of the bundle's build_engine.py, loaded from its path (never found through sys.path), or None
    where TensorRT is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None or not script.is_file():
        return None
    import types

    module = types.ModuleType("edgekit_bundle_build_engine")
    module.__file__ = str(script)
    # compiled from the source whose sha256 was checked: never a cached .pyc, and nothing written into the bundle
    exec(compile(script.read_bytes(), str(script), "exec"), module.__dict__)
    return module.run_engine


def run_device(path: Path, device: dict, inputs: "dict[str, np.ndarray]", runtime: str,
               engine_script: "Path | None" = None):
    """Outputs of the device model keyed by model output name, model layout, float32. TensorRT runs only through
    `engine_script` (check.py passes the bundle's own build_engine.py); edgekit itself never runs bundle code and
    measures a Jetson model in onnxruntime."""
    kind = device["runtime"] if runtime == "auto" else runtime
    if kind == "litert":
        return run_litert(path, device, inputs)
    if kind == "tensorrt":
        run_engine = engine_runner(engine_script) if engine_script is not None else None
        if run_engine is not None:
            return run_engine(path, device, inputs), "tensorrt"
        kind = "onnxruntime"
    if kind == "onnxruntime":
        return run_onnxruntime(path, device, inputs)
    if kind == "openvino":
        return run_openvino(path, device, inputs)
    if kind == "executorch":
        return run_executorch(path, device, inputs)
    raise CheckError(f"unknown runtime {kind!r}: use one of {', '.join(RUNTIMES)}")


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - other) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return 200.0 if noise == 0 else float(np.clip(10 * np.log10(max(signal, 1e-300) / noise), -200, 200))


def compare(golden: "dict[str, np.ndarray]", outputs: "dict[str, np.ndarray]", tolerances: dict) -> dict:
    """Per output: max |new - golden device| against its tolerance, SQNR and top-1 agreement vs the reference."""
    rows, passed = [], True
    for name, atol in tolerances["atol"].items():
        expected, got, reference = golden[f"device/{name}"], outputs[name], golden[f"reference/{name}"]
        error = float(np.max(np.abs(expected.astype(np.float64) - got))) if got.shape == expected.shape else None
        ok = error is not None and bool(np.all(np.isfinite(got))) and error <= atol
        row = {"name": name, "max_abs_err_vs_golden": error, "atol": atol, "passed": ok,
               "sqnr_db_vs_reference": sqnr_db(reference, got) if ok and reference.shape == got.shape else None}
        if name == tolerances.get("class_output") and ok and got.ndim == 2 and reference.shape == got.shape:
            row["top1_agreement_vs_reference"] = float(np.mean(reference.argmax(1) == got.argmax(1)))
            row["top1_agreement_vs_golden"] = float(np.mean(expected.argmax(1) == got.argmax(1)))
        rows.append(row)
        passed = passed and ok
    return {"outputs": rows, "passed": passed}


def check_bundle(bundle: Path, model: "Path | None" = None, runtime: str = "auto", expect_digest: "str | None" = None,
                 engine_script: "Path | None" = None) -> dict:
    """Verify the bundle, then run the golden inputs through the device model and compare; the result says passed
    or not, and why. CheckError (exit 2) for a broken bundle, TamperedError (exit 3) for a modified one."""
    verified = verify_bundle(bundle, model, expect_digest)
    device = verified.manifest["device"]
    try:
        outputs, runtime_used = run_device(verified.model, device, verified.inputs, runtime, engine_script)
        result = compare(verified.golden, outputs, device["tolerances"])
    except CheckError:
        raise
    except Exception as exc:  # a runtime that cannot load or run the model says so in its own words
        raise CheckError(f"{verified.model.name} failed on {runtime}: {type(exc).__name__}: {_reason(exc)}") from None
    result.update({"model": str(verified.model), "runtime": runtime_used,
                   "model_sha256_matches": verified.model_is_measured,
                   "samples": len(next(iter(verified.inputs.values())))})
    result["passed"] = result["passed"] and verified.model_is_measured
    return result


def print_result(result: dict) -> None:
    print(f"edgekit check: {result['samples']} golden samples on {result['runtime']} ({result['model']})")
    if not result["model_sha256_matches"]:
        print("  --model is not the file this bundle was built and measured with (sha256 mismatch)")
    for row in result["outputs"]:
        extra = "".join(f"  {k} {row[k]:.4f}" for k in ("top1_agreement_vs_reference", "top1_agreement_vs_golden")
                        if k in row)
        error = "n/a" if row["max_abs_err_vs_golden"] is None else f"{row['max_abs_err_vs_golden']:.3g}"
        sqnr = "n/a" if row["sqnr_db_vs_reference"] is None else f"{row['sqnr_db_vs_reference']:.1f}"
        print(f"  {row['name']}: max|err| vs golden {error} (tolerance {row['atol']:.3g}), SQNR vs reference "
              f"{sqnr} dB{extra}  {'ok' if row['passed'] else 'DRIFT'}")
    print("PASSED" if result["passed"] else "FAILED: the device model drifts from the bundle's golden outputs")


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description="Check a device model against an edgekit bundle's golden outputs.")
    here = Path(__file__).resolve().parent
    parser.add_argument("--bundle", type=Path, default=here)
    parser.add_argument("--model", type=Path, default=None, help="device model file (default: the bundle's)")
    parser.add_argument("--runtime", default="auto", choices=["auto", *RUNTIMES])
    parser.add_argument("--expect-digest", default=None, help="refuse (exit 3) unless manifest.json has this sha256")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = check_bundle(args.bundle, args.model, args.runtime, args.expect_digest, here / "build_engine.py")
    except TamperedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (CheckError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2)) if args.json else print_result(result)
    return 0 if result["passed"] else 3


if __name__ == "__main__":
    sys.exit(main())
