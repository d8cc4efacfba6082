#!/usr/bin/env python3
"""Standalone on-device check of an edgekit bundle: numpy plus one runtime, nothing else.

Copied into every bundle as check.py (edgekit imports the same file, so both compare alike). It runs the device
model on golden/inputs.npz and compares with golden/outputs.npz within the tolerances in manifest.json.

    python check.py [--model PATH] [--runtime auto|litert|onnxruntime|tensorrt] [--json]

Exit codes: 0 pass, 3 drift beyond the manifest's tolerances (or a model file that is not the measured one),
2 error (missing file, no runtime).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

INTEGER_TYPES = ("int8", "uint8", "int16")


class CheckError(Exception):
    """A problem that stops the check before any comparison (exit code 2)."""


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


def run_litert(path: Path, device: dict, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
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


def run_onnxruntime(path: Path, device: dict, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise CheckError("no ONNX runtime: pip install onnxruntime (or run on the device with TensorRT)") from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [b["model_name"] for b in device["outputs"]]
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for k in range(len(next(iter(inputs.values())))):
        feed = {b["device_name"]: encode(b, inputs[b["model_name"]][k:k + 1]) for b in device["inputs"]}
        for name, value in zip(names, session.run([b["device_name"] for b in device["outputs"]], feed)):
            rows[name].append(value.astype(np.float32))
    return {n: np.concatenate(v) for n, v in rows.items()}, "onnxruntime"


def run_device(path: Path, device: dict, inputs: dict[str, np.ndarray], runtime: str):
    """Outputs of the device model keyed by model output name, model layout, float32."""
    kind = device["runtime"] if runtime == "auto" else runtime
    if kind == "litert":
        return run_litert(path, device, inputs)
    if kind == "tensorrt":
        sys.dont_write_bytecode = True  # importing build_engine must not leave __pycache__ in the bundle
        try:
            from build_engine import run_engine  # shipped beside check.py in Jetson bundles
        except ImportError:
            kind = "onnxruntime"
        else:
            return run_engine(path, device, inputs), "tensorrt"
    if kind == "onnxruntime":
        return run_onnxruntime(path, device, inputs)
    raise CheckError(f"unknown runtime {kind!r}: use litert, onnxruntime or tensorrt")


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - other) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return 200.0 if noise == 0 else float(np.clip(10 * np.log10(max(signal, 1e-300) / noise), -200, 200))


def compare(golden: dict[str, np.ndarray], outputs: dict[str, np.ndarray], tolerances: dict) -> dict:
    """Per output: max |new - golden device| against its tolerance, SQNR and top-1 agreement vs the reference."""
    rows, passed = [], True
    for name, atol in tolerances["atol"].items():
        expected, got, reference = golden[f"device/{name}"], outputs[name], golden[f"reference/{name}"]
        error = float(np.max(np.abs(expected.astype(np.float64) - got))) if got.shape == expected.shape else None
        ok = error is not None and bool(np.all(np.isfinite(got))) and error <= atol
        row = {"name": name, "max_abs_err_vs_golden": error, "atol": atol, "passed": ok,
               "sqnr_db_vs_reference": sqnr_db(reference, got) if ok else None}
        if name == tolerances.get("class_output") and ok:
            row["top1_agreement_vs_reference"] = float(np.mean(reference.argmax(1) == got.argmax(1)))
            row["top1_agreement_vs_golden"] = float(np.mean(expected.argmax(1) == got.argmax(1)))
        rows.append(row)
        passed = passed and ok
    return {"outputs": rows, "passed": passed}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_bundle(bundle: Path, model: Path | None = None, runtime: str = "auto") -> dict:
    """Run the golden inputs through the device model and compare; the result says passed or not, and why."""
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise CheckError(f"{manifest_path} not found: run check.py inside an edgekit bundle")
    manifest = json.loads(manifest_path.read_text())
    device = manifest["device"]
    model = model or bundle / device["model"]
    if not model.is_file():
        raise CheckError(f"device model {model} not found (pass --model PATH)")
    with np.load(bundle / "golden" / "inputs.npz") as inputs_npz, np.load(bundle / "golden" / "outputs.npz") as out_npz:
        inputs = {k: inputs_npz[k] for k in inputs_npz.files}
        golden = {k: out_npz[k] for k in out_npz.files}
    outputs, runtime_used = run_device(model, device, inputs, runtime)
    result = compare(golden, outputs, device["tolerances"])
    expected_sha = manifest["files"].get(device["model"])
    result.update({"model": str(model), "runtime": runtime_used, "samples": len(next(iter(inputs.values()))),
                   "model_sha256_matches": sha256(model) == expected_sha})
    result["passed"] = result["passed"] and result["model_sha256_matches"]
    return result


def print_result(result: dict) -> None:
    print(f"edgekit check: {result['samples']} golden samples on {result['runtime']} ({result['model']})")
    if not result["model_sha256_matches"]:
        print("  model file differs from the one this bundle was built and measured with (sha256 mismatch)")
    for row in result["outputs"]:
        extra = "".join(f"  {k} {row[k]:.4f}" for k in ("top1_agreement_vs_reference", "top1_agreement_vs_golden")
                        if k in row)
        error = "n/a" if row["max_abs_err_vs_golden"] is None else f"{row['max_abs_err_vs_golden']:.3g}"
        sqnr = "n/a" if row["sqnr_db_vs_reference"] is None else f"{row['sqnr_db_vs_reference']:.1f}"
        print(f"  {row['name']}: max|err| vs golden {error} (tolerance {row['atol']:.3g}), SQNR vs reference "
              f"{sqnr} dB{extra}  {'ok' if row['passed'] else 'DRIFT'}")
    print("PASSED" if result["passed"] else "FAILED: the device model drifts from the bundle's golden outputs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a device model against an edgekit bundle's golden outputs.")
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--model", type=Path, default=None, help="device model file (default: the bundle's)")
    parser.add_argument("--runtime", default="auto", choices=["auto", "litert", "onnxruntime", "tensorrt"])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = check_bundle(args.bundle, args.model, args.runtime)
    except (CheckError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2)) if args.json else print_result(result)
    return 0 if result["passed"] else 3


if __name__ == "__main__":
    sys.exit(main())
