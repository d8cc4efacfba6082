"""onnx2tf against litert-torch, side by side, through edgekit itself (same model, data, calibration and checks).

Two small models trained on scikit-learn's digits: the digits CNN of the examples, and a MobileNet-like net
(depthwise-separable blocks, hardswish) trained briefly. For each converter and each model: conversion time
(edgekit's `convert` step: float32 + the target's file), float32 fidelity (SQNR against PyTorch, top-1
agreement), INT8 fidelity (SQNR, agreement, accuracy drop against PyTorch), file sizes and median host latency.

    python benchmarks/bench_converters.py [--out docs/benchmarks-converters.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import edgekit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONVERTERS = ("onnx2tf", "litert-torch")
TARGETS = ("android-arm64-fp32", "android-arm64-int8")


def mobilenet_like():
    """Depthwise-separable blocks as in MobileNet (3x3 depthwise, 1x1 pointwise, BN, hardswish), for 8x8 input."""
    from torch import nn

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                             nn.Hardswish(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.Hardswish())

    return nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
                         block(16, 32, 1), block(32, 64, 2), block(64, 64, 1), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))


def train(model, data: dict, epochs: int = 10, seed: int = 0):
    from examples.digits import train_classifier

    return train_classifier(model, data, epochs, seed)


def models() -> dict[str, tuple[object, dict]]:
    from examples.digits import load_digits_split, train_digits_cnn

    cnn, data = train_digits_cnn(seed=0)
    return {"digits CNN": (cnn, data), "MobileNet-like": (train(mobilenet_like(), load_digits_split(0)), data)}


def measure(model, data: dict, converter: str, target: str, out: Path) -> dict:

    result = edgekit.build(model, target, calibration=(data["x_calib"], data["y_calib"]),
                           eval_data=(data["x_eval"], data["y_eval"]), out=out,
                           options=edgekit.BuildOptions(conversion=edgekit.Conversion(converter=converter),
                                                        verify=edgekit.Verify(emulator="host")), force=True)
    report = result.report
    return {"seconds": report["timings_s"]["convert"], "float_sqnr": report["conversion"]["outputs"][0]["sqnr_db"],
            "sqnr": report["drift"]["outputs"][0]["sqnr_db"], "agreement": report["drift"]["top1_agreement"],
            "drop": report["drift"]["accuracy_drop"], "bytes": report["size"]["device_bytes"],
            "latency_ms": report["latency_ms"]["host"]}


def rows(results: dict) -> list[str]:
    lines = ["| model | converter | convert fp32 (s) | convert int8 (s) | float32 SQNR (dB) | float32 agreement "
             "| INT8 SQNR (dB) | INT8 agreement | INT8 drop (points) | fp32 size (B) | INT8 size (B) "
             "| host latency fp32 / INT8 (µs) |", "|" + "---|" * 12]
    for (model, converter), by_target in results.items():
        fp32, int8 = by_target["android-arm64-fp32"], by_target["android-arm64-int8"]
        lines.append(f"| {model} | {converter} | {fp32['seconds']:.1f} | {int8['seconds']:.1f} | "
                     f"{fp32['float_sqnr']:.1f} | {fp32['agreement']:.4f} | {int8['sqnr']:.1f} | "
                     f"{int8['agreement']:.4f} | {int8['drop']:.2f} | {fp32['bytes']:,} | {int8['bytes']:,} | "
                     f"{fp32['latency_ms'] * 1000:.1f} / {int8['latency_ms'] * 1000:.1f} |")
    return lines


def write(results: dict, out: Path) -> None:
    import edgekit.bundle.lineage as lineage

    versions = lineage.package_versions()
    text = ["# Benchmark: onnx2tf vs litert-torch", "",
            "Both Android converters through `edgekit build` on the same models, data and calibration (the first "
            "200 of 300 digits calibration samples, edgekit's default; minmax; float32 I/O), measured on 360 "
            "held-out eval samples on this machine (2 shared cores). Conversion time is edgekit's `convert` "
            "step (float32 model plus the target's file; for INT8 it includes calibration). SQNR and agreement "
            "are against PyTorch; the INT8 drop is in accuracy points. Latency is LiteRT's median per sample on "
            "the x86 host (XNNPACK), batch 1.", "",
            *rows(results), "",
            f"Versions: onnx2tf {versions['onnx2tf']}, litert-torch {versions['litert-torch']}, ai-edge-quantizer "
            f"{versions['ai-edge-quantizer']}, ai-edge-litert {versions['ai-edge-litert']}, torch "
            f"{versions['torch']}.", "", "Regenerate with `python benchmarks/bench_converters.py`; see "
            "docs/converters.md for what the numbers mean for choosing a converter.", ""]
    out.write_text("\n".join(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-converters.md")
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, data) in models().items():
            for converter in CONVERTERS:
                for target in TARGETS:
                    row = measure(model, data, converter, target, Path(tmp) / f"{converter}-{target}")
                    results.setdefault((name, converter), {})[target] = row
                    print(name, converter, target, row, flush=True)
    write(results, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
