"""A 25M-parameter model (ResNet-50) to INT8 through edgekit and through each converter's plain path, same run.

For each path, edgekit's whole build (`--emulator host`) and the plain path run in their own processes, one after
the other, on the same model, calibration and eval inputs; each process reports its wall time and its peak RSS
(its own and its children's, e.g. the onnx2tf worker). The plain paths are what users chain by hand:

- onnx2tf: `torch.onnx.export` + `onnx2tf -oiqt -qt per-channel -cind` (NHWC calibration file);
- litert-torch: `litert_torch.convert` + ai-edge-quantizer's static W8A8 recipe, calibrated on the same inputs;
- jetson: `torch.onnx.export` + onnxruntime `quantize_static` (Q/DQ, per-channel, min/max).

The plain paths stop at the INT8 file: no float32 check, drift, golden files or report. edgekit's verification
share is everything after its `convert` step in `report.json` `timings_s`.

    python -m benchmarks.bench_large [--paths onnx2tf,litert-torch,jetson] [--calibration 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import write_section

ROOT = Path(__file__).resolve().parents[1]
MODEL = "benchmarks.zoo.architectures:resnet50_model"
PATHS = ("onnx2tf", "litert-torch", "jetson")
EVAL = 32


def model():
    from benchmarks.zoo.architectures import get

    return get("resnet50").build()


def write_data(folder: Path, calibration: int) -> None:
    rng = np.random.default_rng(0)
    np.savez(folder / "calibration.npz", x=rng.standard_normal((calibration, 3, 224, 224), dtype=np.float32))
    np.savez(folder / "eval.npz", x=rng.standard_normal((EVAL, 3, 224, 224), dtype=np.float32))


# --- the measured jobs, each run in its own process (`--job`) ----------------------------------------------------


def edgekit_job(path: str, folder: Path) -> dict:
    from edgekit.cli import main

    target = "jetson-orin-int8" if path == "jetson" else "android-arm64-int8"
    args = ["build", MODEL, "--target", target, "--calibration", str(folder / "calibration.npz"), "--eval",
            str(folder / "eval.npz"), "--out", str(folder / f"edgekit-{path}"), "--force", "--emulator", "host",
            "--max-drop", "100", "--min-agreement", "0"]
    if path != "jetson":
        args += ["--converter", path]
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, 3, None):
            raise
    report = json.loads((folder / f"edgekit-{path}" / "report.json").read_text())
    return {"timings_s": report["timings_s"], "int8_sqnr_db": min(o["sqnr_db"] for o in report["drift"]["outputs"]),
            "device_bytes": report["size"]["device_bytes"]}


def plain_job(path: str, folder: Path) -> dict:
    import torch

    module = model()
    with np.load(folder / "calibration.npz") as data:
        calibration = data["x"]
    work = folder / f"plain-{path}"
    work.mkdir(exist_ok=True)
    example = (torch.from_numpy(calibration[:1]),)
    if path == "litert-torch":
        return _plain_litert(module, example, calibration, work)
    torch.onnx.export(module, example, str(work / "model.onnx"), dynamo=True, input_names=["input"],
                      output_names=["logits"])
    if path == "onnx2tf":
        return _plain_onnx2tf(calibration, work)
    return _plain_ort(calibration, work)


def _plain_onnx2tf(calibration: np.ndarray, work: Path) -> dict:
    np.save(work / "calib.npy", calibration.transpose(0, 2, 3, 1))
    # onnx2tf loads its own sample file at INT8 even when -cind gives the data
    np.save(work / "calibration_image_sample_data_20x128x128x3_float32.npy", np.zeros((20, 128, 128, 3), np.float32))
    binary = Path(sys.executable).parent / "onnx2tf"
    env = {**os.environ, "PATH": f"{binary.parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(binary), "-i", "model.onnx", "-o", "out", "-oiqt", "-qt", "per-channel", "-cind", "input",
                    "calib.npy", "[0.0]", "[1.0]", "-n"], cwd=work, check=True, env=env, stdout=subprocess.DEVNULL)
    return {"device_bytes": (work / "out" / "model_integer_quant.tflite").stat().st_size}


def _plain_litert(module, example: tuple, calibration: np.ndarray, work: Path) -> dict:
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    litert_torch.convert(module, example).export(str(work / "float.tflite"))
    signature = Interpreter(model_path=str(work / "float.tflite")).get_signature_list()
    key = next(iter(signature))
    name = signature[key]["inputs"][0]
    q = quantizer.Quantizer(str(work / "float.tflite"), recipe.static_wi8_ai8())
    ranges = q.calibrate({key: [{name: sample[None]} for sample in calibration]})
    (work / "int8.tflite").write_bytes(bytes(q.quantize(ranges).quantized_model))
    return {"device_bytes": (work / "int8.tflite").stat().st_size}


def _plain_ort(calibration: np.ndarray, work: Path) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(calibration)

        def get_next(self):
            sample = next(self.samples, None)
            return None if sample is None else {"input": sample[None]}

    quantize_static(str(work / "model.onnx"), str(work / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return {"device_bytes": (work / "int8.onnx").stat().st_size}


def run_job(kind: str, path: str, folder: Path) -> dict:
    """One job in a fresh process: its result, wall seconds and peak RSS (MB) of it and its children."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_large", "--job", kind, path, str(folder)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{kind} {path} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "seconds": seconds}


def _job_main(kind: str, path: str, folder: Path) -> None:
    result = (edgekit_job if kind == "edgekit" else plain_job)(path, folder)
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(json.dumps({**result, "peak_rss_mb": round(peak / 1024)}))


# --- the table -----------------------------------------------------------------------------------------------------


def verification(timings: dict) -> float:
    """Seconds after conversion: drift, per-layer drift, golden files and report (every step after `convert`)."""
    names = [n for n in timings if n != "bias_correction"]  # a part of convert, reported beside it
    return sum(timings[n] for n in names[names.index("convert") + 1:]) if "convert" in names else 0.0


def render(results: dict, calibration: int) -> str:
    lines = [
        "## A 25M-parameter model: ResNet-50 to INT8, edgekit against the plain path of each converter",
        "",
        f"ResNet-50 (25.6M parameters, torchvision definition, random weights), 224x224, {calibration} calibration "
        f"and {EVAL} eval inputs, on this machine (2 cores); each job in its own process, edgekit and the plain "
        "path one after the other (`make bench-large`). Goals: whole build <= 1.3x the plain "
        "path; verification (every step after conversion) <= 25 % of the build; peak RSS <= 1.2x.",
        "",
        "| path | plain s | edgekit s | time ratio | edgekit convert s | verification s | verification share | "
        "plain peak RSS MB | edgekit peak RSS MB | RSS ratio | INT8 SQNR dB (edgekit) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path, pair in results.items():
        plain, ours = pair["plain"], pair["edgekit"]
        check = verification(ours["timings_s"])
        lines.append(
            f"| {path} | {plain['seconds']:.1f} | {ours['seconds']:.1f} | {ours['seconds'] / plain['seconds']:.2f} | "
            f"{ours['timings_s'].get('convert', 0):.1f} | {check:.1f} | {check / ours['seconds']:.0%} | "
            f"{plain['peak_rss_mb']} | {ours['peak_rss_mb']} | {ours['peak_rss_mb'] / plain['peak_rss_mb']:.2f} | "
            f"{ours['int8_sqnr_db']:.1f} |")
    steps = "; ".join(f"{path}: " + ", ".join(f"{k} {v:.1f}" for k, v in pair["edgekit"]["timings_s"].items())
                      for path, pair in results.items())
    return "\n".join([*lines, "", f"edgekit's steps (s): {steps}.", ""])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--job"]:
        _job_main(argv[1], argv[2], Path(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                        help="the markdown file its section goes into")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_data(folder, args.calibration)
        for path in args.paths.split(","):
            results[path] = {kind: run_job(kind, path, folder) for kind in ("plain", "edgekit")}
            print(json.dumps({path: results[path]}), file=sys.stderr, flush=True)
    table = render(results, args.calibration)
    write_section(args.out, "bench_large", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
