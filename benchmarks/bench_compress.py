"""Compression on a >= 200k-parameter digits CNN: size, gzip size, host LiteRT latency and accuracy of the float32
and INT8 TFLite models of the original, and of pruned / clustered / pruned+clustered INT8 models.

Every variant is compressed with edgekit.transform.compress.torch, exported and converted with the same pipeline
pieces an edgekit build uses (onnx2tf, INT8 per-channel, float32 I/O), then measured on the host with LiteRT.
Latencies are medians over `--repeats` single-sample invocations (one thread), interleaved across the variants in
rounds so that load from other processes hits them alike.

    python benchmarks/bench_compress.py [--repeats 3000] [--out docs/benchmarks-compression.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.measure.size import gzip_size

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # examples/ is importable as a package

WIDTH, HIDDEN = 48, 256  # 438,378 parameters
CALIBRATION_SAMPLES = 100


@dataclass(frozen=True)
class Converted:
    """A model converted to TFLite: the float32 and the INT8 (float I/O) file, and the ONNX export behind them."""

    float32: Path
    int8: Path
    export: object


def train_model(seed: int = 0):
    """(model, data): the digits CNN at a size where compression matters (>= 200k parameters)."""
    from examples.digits import train_digits_cnn

    return train_digits_cnn(width=WIDTH, hidden=HIDDEN, epochs=15, seed=seed)


def convert_module(module, calibration: np.ndarray, workdir: Path) -> Converted:
    """nn.Module -> ONNX -> onnx2tf INT8 (android-arm64-int8, float32 I/O), as an edgekit build does it."""
    from edgekit.config.target import load_target
    from edgekit.inputs.model import load_model
    from edgekit.routes.litert import onnx2tf
    from edgekit.transform.export import export_onnx, resolve_inputs

    workdir.mkdir(parents=True, exist_ok=True)
    loaded = load_model(module)
    inputs = resolve_inputs(loaded, {"x": calibration.shape[1:]})
    export = export_onnx(loaded, inputs, workdir / "model.onnx")
    samples = {inputs[0].name: calibration[:CALIBRATION_SAMPLES]}
    files = onnx2tf.convert(export, samples, load_target("android-arm64-int8"), "float32", workdir)
    return Converted(files.float32, files.device, export)


def device_predictions(path: Path, converted: Converted, module, x: np.ndarray) -> np.ndarray:
    """Class scores of the .tflite on `x` (model layout), with I/O bound the way a build binds them."""
    import torch

    from edgekit.routes.litert import onnx2tf
    from edgekit.routes.litert.runner import LiteRTRunner

    export = converted.export
    inputs = onnx2tf.bind_inputs(path, export)
    name = export.inputs[0].name
    with torch.no_grad():
        reference = {export.outputs[0].name: module(torch.from_numpy(x[:8])).numpy()}
    outputs, _ = onnx2tf.bind_outputs(path, inputs, {name: x[:8]}, reference)
    with LiteRTRunner(path, inputs, outputs) as runner:
        return runner.run({name: x})[export.outputs[0].name]


def device_accuracy(path: Path, converted: Converted, module, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(device_predictions(path, converted, module, x).argmax(1) == y))


def median_latencies_ms(paths: list[Path], repeats: int, rounds: int = 5) -> list[float]:
    """Median single-inference latency of each model (one thread), measured in interleaved rounds."""
    from edgekit.routes.litert.runner import open_interpreter

    interpreters = [open_interpreter(p, num_threads=1) for p in paths]
    for interpreter in interpreters:
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], np.random.default_rng(0).random(detail["shape"], dtype=np.float32))
        for _ in range(50):
            interpreter.invoke()
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for interpreter, collected in zip(interpreters, times):
            for _ in range(max(repeats // rounds, 1)):
                start = time.perf_counter()
                interpreter.invoke()
                collected.append(time.perf_counter() - start)
    return [float(np.median(t) * 1000.0) for t in times]


def variants():
    from edgekit.config.options import Cluster, Prune

    return [("prune 50 % unstructured", Prune(0.5), None, 0),
            ("prune 50 % structured", Prune(0.5, mode="structured"), None, 0),
            ("prune 50 % structured, recover 200", Prune(0.5, mode="structured"), None, 200),
            ("16 clusters", None, Cluster(16), 0),
            ("prune 50 % + 16 clusters", Prune(0.5), Cluster(16), 0),
            ("prune 50 % + 16 clusters, recover 200", Prune(0.5), Cluster(16), 200)]


def measure(work: Path, repeats: int) -> list[dict]:
    from edgekit.routes.litert.weights import device_weights
    from edgekit.transform.compress.common import preservation
    from edgekit.transform.compress.torch import compress

    model, data = train_model()
    x, y = data["x_eval"], data["y_eval"]
    base = convert_module(model, data["x_calib"], work / "original")
    reference = float(np.mean(_torch_predictions(model, x) == y))
    rows = [_row("float32 (original)", base.float32, device_accuracy(base.float32, base, model, x, y), reference),
            _row("INT8", base.int8, device_accuracy(base.int8, base, model, x, y), reference)]
    rows[0].update(params=_params(model), block=None, samples=len(y))
    rows[1].update(params=_params(model), block=None)
    for index, (name, prune, cluster, steps) in enumerate(variants()):
        start = time.perf_counter()
        compressed, block = compress(model, prune, cluster, data["x_calib"], steps, seed=0)
        seconds = time.perf_counter() - start
        converted = convert_module(compressed, data["x_calib"], work / f"variant{index}")
        layers, warnings = preservation(block, device_weights(converted.int8), compressed)
        row = _row(f"{name} + INT8", converted.int8, device_accuracy(converted.int8, converted, compressed, x, y),
                   reference)
        row.update(params=block["params_after"], block=block, layers=layers, warnings=warnings,
                   compress_s=seconds)
        rows.append(row)
    latencies = median_latencies_ms([r["path"] for r in rows], repeats)
    for row, latency in zip(rows, latencies):
        row.update(latency_ms=latency, baseline_gzip=rows[0]["gzip"], baseline_latency=latencies[1])
    return rows


def _torch_predictions(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()


def _params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _row(name: str, path: Path, accuracy: float, reference: float) -> dict:
    return {"name": name, "path": path, "bytes": path.stat().st_size, "gzip": gzip_size(path), "accuracy": accuracy,
            "drop": (reference - accuracy) * 100.0, "reference": reference}


def _device_checks(row: dict) -> str:
    layers = [r for r in row.get("layers") or () if r["skipped"] is None]
    if not layers:
        return ""
    parts = [f"{r['module']}: {r['device_sparsity']:.2f} / {r['device_max_distinct']}" for r in layers]
    return "; ".join(parts) + (" ⚠ " + " | ".join(row["warnings"]) if row["warnings"] else "")


def table(rows: list[dict]) -> str:
    reference = rows[0]["reference"]
    lines = [f"Digits CNN (width {WIDTH}, hidden {HIDDEN}, {rows[0]['params']:,} parameters), PyTorch eval accuracy "
             f"{reference:.4f} on {rows[0]['samples']} samples; first and last layer left alone (the default).", "",
             "| model | params | .tflite bytes | gzip bytes | gzip vs float32 | host latency ms | vs INT8 | accuracy "
             "| drop (points) | device sparsity / max distinct per channel |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['params']:,} | {r['bytes']:,} | {r['gzip']:,} | "
                     f"1/{r['baseline_gzip'] / r['gzip']:.1f} | {r['latency_ms']:.4f} | "
                     f"{r['latency_ms'] / r['baseline_latency']:.2f} | {r['accuracy']:.4f} | {r['drop']:+.2f} | "
                     f"{_device_checks(r)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-compression.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(Path(tmp), args.repeats)
    text = "# Compression benchmark\n\n" + table(rows) + (
        "\nLatency: median of single-sample LiteRT invocations on the host (x86-64, one thread, XNNPACK), "
        f"{args.repeats} per model in interleaved rounds; `vs INT8` is the ratio to the uncompressed INT8 model. "
        "Drop: PyTorch float accuracy of the original minus the device accuracy, in points. Device sparsity / "
        "distinct: measured in the INT8 .tflite for each compressed layer.\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
