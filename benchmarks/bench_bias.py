"""Bias correction's cost beside the conversion's, per model: each built to android-arm64-int8 with `--equalize off`
and `--equalize auto` (the default, which runs bias correction), each build in its own process.

Models: the speaker encoder of benchmarks/zoo/architectures.py (a 3-layer LSTM over 160 frames x 40 mel bins,
1.4 M parameters, random weights: litert-torch unrolls it into 481 FULLY_CONNECTED ops), ResNet-50 and
MobileNetV2 (torchvision, random weights) through litert-torch, and the digits CNN of the examples through onnx2tf.
The table: conversion time with and without the correction, the correction's own time and its share of the
whole build, the levels it measured (one interpreter run each), the ops it corrected and the INT8 model's SQNR
against the float32 one before and after.

    python -m benchmarks.bench_bias [--cache DIR] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import cached_build, markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (source, converter, input shape per sample, calibration samples)
    "speaker LSTM (160 x 40)": ("benchmarks.zoo.architectures:speaker_lstm", "litert-torch", (160, 40), 32),
    "ResNet-50": ("benchmarks.zoo.architectures:resnet50_model", "litert-torch", (3, 224, 224), 32),
    "MobileNetV2": ("benchmarks.zoo.architectures:mobilenet_v2_model", "litert-torch", (3, 224, 224), 32),
    "digits CNN": (str(ROOT / "examples" / "01_android_int8" / "digits_cnn.pt2"), "onnx2tf", None, None),
}


def _data(name: str, shape, count, cache: Path) -> tuple[str, str]:
    if shape is None:  # the example's own data
        folder = ROOT / "examples" / "01_android_int8"
        return str(folder / "calibration.npz"), str(folder / "eval.npz")
    rng = np.random.default_rng(0)
    paths = []
    for split, samples in (("calibration", count), ("eval", 16)):
        path = cache / f"{name.split()[0]}-{split}.npy"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, rng.standard_normal((samples, *shape), dtype=np.float32))
        paths.append(str(path))
    return paths[0], paths[1]


def measure(name: str, cache: Path) -> dict:
    source, converter, shape, count = MODELS[name]
    calibration, evaluation = _data(name, shape, count, cache)
    found = {}
    for mode in ("off", "auto"):
        result = cached_build(cache / name.split()[0] / mode, [
            source, "--target", "android-arm64-int8", "--converter", converter, "--calibration", calibration,
            "--eval", evaluation, "--emulator", "host", "--max-drop", "100", "--min-agreement", "0",
            "--min-sqnr", "0", "--task", "embed" if "LSTM" in name else "classify", "--equalize", mode])
        if result["report"] is None:
            raise SystemExit(f"{name} ({mode}) failed: {result['stderr'][-800:]}")
        found[mode] = result["report"]
    return found


def row(name: str, reports: dict) -> str:
    off, auto = reports["off"], reports["auto"]
    block = auto["quantization"]["bias_correction"] or {}
    total = sum(v for k, v in auto["timings_s"].items() if k != "bias_correction")
    seconds = block.get("seconds")
    sqnr = block.get("sqnr_db") or {}
    return "| " + " | ".join([
        name, f"{off['timings_s']['convert']:.1f}", f"{auto['timings_s']['convert']:.1f}",
        "n/a" if seconds is None else f"{seconds:.1f}", "n/a" if seconds is None else f"{100 * seconds / total:.0f} %",
        str(block.get("levels", "n/a")), str(len(block.get("layers", []))),
        f"{sqnr.get('before', float('nan')):.1f} -> {sqnr.get('after', float('nan')):.1f}",
        "yes" if block.get("applied") else "no"]) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgekit-bench-bias")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    rows = [row(name, measure(name, args.cache)) for name in args.models]
    header = ["model", "convert s (--equalize off)", "convert s (auto)", "bias correction s", "share of the build",
              "levels (runs)", "ops corrected", "INT8 vs float32 SQNR dB, before -> after", "kept"]
    text = ("## Bias correction beside the conversion\n\nandroid-arm64-int8, random weights and inputs, each build in "
            "its own process on this machine (`python -m benchmarks.bench_bias`). Bias correction is part of "
            "`convert`; its share is of the whole `--equalize auto` build.\n\n" + markdown_table(header, rows))
    write_section(args.out, "bench_bias", text)
    print(text)


if __name__ == "__main__":
    main()
