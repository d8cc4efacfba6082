"""edgekit build (INT8) against the hand-made pipeline (torch.onnx.export + onnx2tf INT8 + LiteRT eval).

Both run on the same model and data in the same process run, alternating, `--repeats` times each; the table
reports median wall times, their ratio, and the INT8 accuracy drop each pipeline ends with.

    python -m benchmarks.bench_build [--repeats 3] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import edgekit
from benchmarks import write_section

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "01_android_int8"


def load_example() -> tuple[object, dict[str, np.ndarray]]:
    import torch

    with np.load(EXAMPLE / "calibration.npz") as calib, np.load(EXAMPLE / "eval.npz") as evaluation:
        data = {"x_calib": calib["x"], "y_calib": calib["y"], "x_eval": evaluation["x"], "y_eval": evaluation["y"]}
    return torch.export.load(str(EXAMPLE / "digits_cnn.pt2")).module(), data


def run_edgekit(work: Path) -> tuple[float, float]:

    start = time.perf_counter()
    result = edgekit.build(EXAMPLE / "digits_cnn.pt2", "android-arm64-int8", calibration=EXAMPLE / "calibration.npz",
                           eval_data=EXAMPLE / "eval.npz", out=work / "edgekit",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")), force=True)
    return time.perf_counter() - start, result.report["drift"]["accuracy_drop"]


def run_by_hand(work: Path, module, data: dict[str, np.ndarray]) -> tuple[float, float]:
    """What users chain today: export, write NHWC calibration data, onnx2tf -oiqt, then evaluate in LiteRT."""
    import torch
    from ai_edge_litert.interpreter import Interpreter

    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module, (torch.from_numpy(data["x_calib"][:1]),), work / "model.onnx", dynamo=True,
                      input_names=["input"], output_names=["logits"])
    np.save(work / "calib.npy", data["x_calib"][:200].transpose(0, 2, 3, 1))
    np.save(work / "calibration_image_sample_data_20x128x128x3_float32.npy", np.zeros((20, 128, 128, 3), np.float32))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(Path(sys.executable).parent / "onnx2tf"), "-i", "model.onnx", "-o", "out", "-oiqt",
                    "-qt", "per-channel", "-cind", "input", "calib.npy", "[0.0]", "[1.0]", "-n"],
                   cwd=work, check=True, capture_output=True, env=env)
    interpreter = Interpreter(model_path=str(work / "out" / "model_integer_quant.tflite"))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    predictions = []
    for x in data["x_eval"]:
        interpreter.set_tensor(inp["index"], x.transpose(1, 2, 0)[None])
        interpreter.invoke()
        predictions.append(int(interpreter.get_tensor(out["index"]).argmax()))
    with torch.no_grad():
        reference = np.array([int(module(torch.from_numpy(x[None])).argmax()) for x in data["x_eval"]])
    drop = (np.mean(reference == data["y_eval"]) - np.mean(np.array(predictions) == data["y_eval"])) * 100
    return time.perf_counter() - start, float(drop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    module, data = load_example()
    times: dict[str, list[float]] = {"edgekit": [], "hand": []}
    drops: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            seconds, drops["edgekit"] = run_edgekit(Path(tmp))
            times["edgekit"].append(seconds)
            seconds, drops["hand"] = run_by_hand(Path(tmp) / f"hand{i}", module, data)
            times["hand"].append(seconds)
    table = render(times, drops, args.repeats)
    write_section(args.out, "bench_build", table)
    print(table)


def render(times: dict[str, list[float]], drops: dict[str, float], repeats: int) -> str:
    edgekit_s, hand_s = statistics.median(times["edgekit"]), statistics.median(times["hand"])
    return "\n".join([
        "# Benchmark: edgekit build vs the hand-made INT8 pipeline",
        "",
        f"Digits CNN (examples/01_android_int8), android-arm64-int8, median of {repeats} alternating runs on "
        "this machine (2 cores). The hand-made pipeline is torch.onnx.export + onnx2tf -oiqt with NHWC "
        "calibration data + a LiteRT accuracy loop; edgekit additionally verifies the float32 conversion, maps "
        "outputs, writes golden I/O, manifest, reports and check.py.",
        "",
        "| pipeline | wall time (s) | INT8 accuracy drop (points) |",
        "|---|---|---|",
        f"| edgekit build | {edgekit_s:.1f} | {drops['edgekit']:.2f} |",
        f"| by hand | {hand_s:.1f} | {drops['hand']:.2f} |",
        f"| ratio edgekit / by hand | {edgekit_s / hand_s:.2f} | |",
        "",
        "Regenerate with `make bench` (`python -m benchmarks.bench_build`).",
        "",
    ])


if __name__ == "__main__":
    main()
