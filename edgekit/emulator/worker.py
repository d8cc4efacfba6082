"""Runs a model inside the ARM64 emulator: `python3.11 -s worker.py MODEL IN.npz OUT.npz THREADS`. A .tflite runs
in LiteRT, a .ort or .onnx in onnxruntime (ONNX Runtime Mobile's kernels on ARM64), a .xml in OpenVINO's ARM CPU
plugin.

It runs under the emulated python with only numpy, LiteRT, onnxruntime and openvino on its path, so it imports
nothing from edgekit and starts no child process (QEMU user mode emulates one process). Both .npz files hold
`__names__` (tensor names, in order) and `t0`, `t1`, ... (one array per name), so any tensor name survives the
round trip.
Exit codes: 0 done, 3 the inputs do not fit the model (message on the last stderr line), else a crash.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

INPUT_ERROR_EXIT = 3
INPUT_ERROR_PREFIX = "edgekit-worker input error: "


class InputMismatch(Exception):
    """The inputs do not fit the model's input tensors."""


def interpreter_class() -> type:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


def read_named(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {str(name): stored[f"t{i}"] for i, name in enumerate(stored["__names__"])}


def write_named(path: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    tensors = {f"t{i}": array for i, array in enumerate(arrays.values())}
    np.savez(path, __names__=np.array(list(arrays)), __meta__=np.array(json.dumps(meta)), **tensors)


def fit_inputs(interpreter, inputs: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
    """Match inputs to tensors by name and check shape and dtype; resize a dynamic batch-1 shape if needed."""
    details = {d["name"]: d for d in interpreter.get_input_details()}
    if set(details) != set(inputs):
        raise InputMismatch(f"the model's inputs are {sorted(details)}, got {sorted(inputs)}")
    for name, array in inputs.items():
        sample_shape = (1, *array.shape[1:])
        wanted, signature = tuple(details[name]["shape"]), tuple(details[name]["shape_signature"])
        if array.dtype != details[name]["dtype"]:
            raise InputMismatch(
                f"input {name!r} must be {np.dtype(details[name]['dtype'])}, got {array.dtype}"
            )
        if sample_shape != wanted:
            fits = len(signature) == len(sample_shape) and all(
                s in (-1, n) for s, n in zip(signature, sample_shape, strict=True)
            )
            if not fits:
                raise InputMismatch(
                    f"input {name!r}: a sample has shape {sample_shape}, the model takes {wanted}"
                )
            interpreter.resize_tensor_input(details[name]["index"], sample_shape)
    interpreter.allocate_tensors()
    return [(details[name]["index"], array) for name, array in inputs.items()]


def run(model: str, inputs: dict[str, np.ndarray], num_threads: int) -> tuple[dict[str, np.ndarray], dict]:
    if model.endswith((".ort", ".onnx")):
        return run_onnxruntime(model, inputs, num_threads)
    if model.endswith(".xml"):
        return run_openvino(model, inputs, num_threads)
    return run_litert(model, inputs, num_threads)


def run_openvino(model: str, inputs: dict[str, np.ndarray], num_threads: int) -> tuple[dict[str, np.ndarray],
                                                                                     dict]:
    """The IR (its .bin beside it) on OpenVINO's ARM CPU plugin in float32 precision, one sample at a time."""
    import openvino as ov

    started = time.perf_counter()
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                  "INFERENCE_NUM_THREADS": str(num_threads)})
    expected = {port.get_any_name() for port in compiled.inputs}
    if expected != set(inputs):
        raise InputMismatch(f"the model's inputs are {sorted(expected)}, got {sorted(inputs)}")
    ports = list(compiled.outputs)
    request = compiled.create_infer_request()
    samples = len(next(iter(inputs.values())))
    collected: list[list[np.ndarray]] = [[] for _ in ports]
    invoke_started = time.perf_counter()
    for i in range(samples):
        result = request.infer({k: v[i:i + 1] for k, v in inputs.items()})
        for per_output, port in zip(collected, ports):
            per_output.append(np.array(result[port], copy=True))
    seconds = time.perf_counter() - invoke_started
    stacked = {port.get_any_name(): stack_samples(values) for port, values in zip(ports, collected, strict=True)}
    return stacked, {"load_s": invoke_started - started, "invoke_ms": 1000 * seconds / samples}


def run_onnxruntime(model: str, inputs: dict[str, np.ndarray], num_threads: int) -> tuple[dict[str, np.ndarray],
                                                                                        dict]:
    """One session, one sample (batch 1) at a time; inputs and outputs by tensor name, stacked to [N, ...]."""
    import onnxruntime as ort

    started = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    expected = {i.name: i for i in session.get_inputs()}
    if set(expected) != set(inputs):
        raise InputMismatch(f"the model's inputs are {sorted(expected)}, got {sorted(inputs)}")
    names = [o.name for o in session.get_outputs()]
    samples = len(next(iter(inputs.values())))
    collected: list[list[np.ndarray]] = [[] for _ in names]
    invoke_started = time.perf_counter()
    for i in range(samples):
        for per_output, value in zip(collected, session.run(names, {k: v[i:i + 1] for k, v in inputs.items()})):
            per_output.append(value)
    seconds = time.perf_counter() - invoke_started
    stacked = {name: stack_samples(values) for name, values in zip(names, collected, strict=True)}
    return stacked, {"load_s": invoke_started - started, "invoke_ms": 1000 * seconds / samples}


def run_litert(model: str, inputs: dict[str, np.ndarray], num_threads: int) -> tuple[dict[str, np.ndarray], dict]:
    """Invoke the model once per sample (batch 1) with the default delegate; stack outputs to [N, ...]."""
    started = time.perf_counter()
    interpreter = interpreter_class()(model_path=model, num_threads=num_threads)
    interpreter.allocate_tensors()
    feeds = fit_inputs(interpreter, inputs)
    outputs = interpreter.get_output_details()
    samples = len(next(iter(inputs.values())))
    collected: list[list[np.ndarray]] = [[] for _ in outputs]
    invoke_started = time.perf_counter()
    for i in range(samples):
        for index, array in feeds:
            interpreter.set_tensor(index, array[i : i + 1])
        interpreter.invoke()
        for per_output, detail in zip(collected, outputs, strict=True):
            per_output.append(interpreter.get_tensor(detail["index"]))
    seconds = time.perf_counter() - invoke_started
    stacked = {d["name"]: stack_samples(values) for d, values in zip(outputs, collected, strict=True)}
    return stacked, {"load_s": invoke_started - started, "invoke_ms": 1000 * seconds / samples}


def stack_samples(values: list[np.ndarray]) -> np.ndarray:
    if all(v.ndim and v.shape[0] == 1 for v in values):
        return np.concatenate(values)
    return np.stack(values)


def versions() -> dict[str, str]:
    import importlib.metadata
    import platform

    litert = next((d for d in ("ai-edge-litert", "tflite-runtime") if has_distribution(d)), None)
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "litert": importlib.metadata.version(litert) if litert else None,
        "onnxruntime": importlib.metadata.version("onnxruntime") if has_distribution("onnxruntime") else None,
        "openvino": importlib.metadata.version("openvino") if has_distribution("openvino") else None,
    }


def has_distribution(name: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def main(argv: list[str]) -> int:
    model, inputs_path, outputs_path, num_threads = argv
    try:
        outputs, timing = run(model, read_named(inputs_path), int(num_threads))
    except InputMismatch as exc:
        print(INPUT_ERROR_PREFIX + str(exc), file=sys.stderr)
        return INPUT_ERROR_EXIT
    write_named(outputs_path, outputs, {**timing, **versions()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
