"""Mixed precision by measurement on trained models whose plain INT8 loses the most: the zoo's YOLO-style detector
(benchmarks/zoo/detection.py) and its 1-D audio CNNs (benchmarks/zoo/trained.py, espeak-ng keywords: tcn_1d on
normalized log-mel, tcn_1d_energies on raw log-mel energies normalized in the graph, m5_audio on the raw
waveform), and CREPE tiny with its published weights (benchmarks/zoo/published.py, 64 ms frames of the same
clips). The table in docs/precision.md.

    python -m benchmarks.bench_mixed [--models yolo_style_dfl,tcn_1d,...] [--cache DIR] [--out FILE]

Per model, each row one `edgekit build` (LiteRT, host) in its own process, cached in --cache:
- onnx2tf's own INT8 and 16x8 files (what a user gets by hand: `*_integer_quant.tflite`,
  `*_integer_quant_with_int16_act.tflite`), measured here against PyTorch with edgekit's bindings;
- edgekit's INT8 through each converter with `--equalize off` (no equalization, no bias correction);
- the whole-model int16x8 target;
- INT8 with bias correction (`--equalize on`);
- mixed precision: that, with `--fallback auto --task regress --min-sqnr 40 --max-size <1.5x INT8>
  --max-latency-ratio 2`, so the ladder climbs (16x8, then float) until every output is within 40 dB of PyTorch
  (`--task regress` gates the keyword scores by SQNR too, not by top-1 agreement), and never ships a model over
  1.5x the INT8 model's size or 2x its host latency.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks import cached_build, markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("yolo_style_dfl", "tcn_1d", "tcn_1d_energies", "m5_audio", "crepe_tiny")


def _sources(model: str, cache: Path) -> tuple[str, Path, Path]:
    folder = cache / model / "data"
    if model == "yolo_style_dfl":
        from benchmarks.zoo import detection

        detection.train()
        calibration, evaluation = detection.data_files(folder)
        return "benchmarks.zoo.detection:yolo_style_dfl_trained", calibration, evaluation
    if model.startswith("crepe"):  # published weights (benchmarks/zoo/published.py): nothing to train
        from benchmarks.zoo import published

        folder.mkdir(parents=True, exist_ok=True)
        calibration, evaluation = folder / "calibration.npz", folder / "eval.npz"
        if not evaluation.exists():
            np.savez(calibration, x=published.crepe_frames(200, "train", seed=0))
            np.savez(evaluation, x=published.crepe_frames(300, "test", seed=1))
        return f"benchmarks.zoo.published:{model}", calibration, evaluation
    from benchmarks.zoo import trained

    trained.train(model)
    data = trained.dataset(model)
    folder.mkdir(parents=True, exist_ok=True)
    calibration, evaluation = folder / "calibration.npz", folder / "eval.npz"
    if not evaluation.exists():
        np.savez(calibration, x=data["x_train"][:200])
        np.savez(evaluation, x=data["x_test"][:300], y=data["y_test"][:300])
    return f"benchmarks.zoo.trained:{model}_trained", calibration, evaluation


def build(model: str, name: str, target: str, options: list[str], cache: Path, equalize: str = "off") -> dict:
    source, calibration, evaluation = _sources(model, cache)
    return cached_build(cache / model / name, [
        source, "--target", target, "--calibration", str(calibration), "--eval", str(evaluation), "--emulator",
        "host", "--max-drop", "100", "--min-agreement", "0", "--equalize", equalize, *options])


def onnx2tf_files(model: str, cache: Path) -> dict:
    """onnx2tf's own INT8 and 16x8 files of the model (what a user gets by hand), against PyTorch on the eval data:
    {"int8" | "16x8": {"sqnr_db", "bytes", "latency_ms"}}."""
    result_file = cache / model / "onnx2tf_files.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    from edgekit.config.target import load_target
    from edgekit.inputs.data import load_data
    from edgekit.inputs.model import load_model
    from edgekit.measure.drift import output_metrics
    from edgekit.routes.litert import onnx2tf
    from edgekit.routes.litert.runner import LiteRTRunner
    from edgekit.runners.onnxrt import OnnxRunner
    from edgekit.transform.export import export_onnx, resolve_inputs

    source, calibration, evaluation = _sources(model, cache)
    loaded = load_model(source)
    calib, data = load_data(str(calibration), None, "calibration"), load_data(str(evaluation), None, "eval")
    inputs = resolve_inputs(loaded, {k: v.shape[1:] for k, v in calib.inputs.items()}, None,
                            {k: v.dtype.name for k, v in calib.inputs.items()})
    work = cache / model / "onnx2tf"
    work.mkdir(parents=True, exist_ok=True)
    export = export_onnx(loaded, inputs, work / "model.onnx")
    name = inputs[0].name
    files = onnx2tf.convert(export, {name: calib.inputs["x"]}, load_target("android-arm64-int8"), "float32", work)
    samples = {name: data.inputs["x"][:8]}
    with OnnxRunner(export.path) as runner:
        reference = runner.run({name: data.inputs["x"]})
    result = {}
    for precision, suffix in (("int8", "integer_quant"), ("16x8", "integer_quant_with_int16_act")):
        path = files.float32.with_name(f"{export.path.stem}_{suffix}.tflite")
        device_in = onnx2tf.bind_inputs(path, export)
        device_out, _ = onnx2tf.bind_outputs(path, device_in, samples, {k: v[:8] for k, v in reference.items()})
        with LiteRTRunner(path, device_in, device_out) as runner:
            outputs = runner.run({name: data.inputs["x"]})
            latency = runner.median_latency_ms()
        sqnr = min(r["sqnr_db"] for r in output_metrics(reference, outputs))
        result[precision] = {"sqnr_db": round(sqnr, 2), "bytes": path.stat().st_size, "latency_ms": round(latency, 4)}
    result_file.write_text(json.dumps(result))
    return result


def rows_for(model: str, cache: Path) -> list[str]:
    int8 = {conv: build(model, f"int8-{conv}", "android-arm64-int8", ["--converter", conv], cache)
            for conv in ("onnx2tf", "litert-torch")}
    base = int8["onnx2tf"]["report"]
    size, latency = base["size"]["device_bytes"], base["latency_ms"]["host"]
    whole = build(model, "int16x8", "android-arm64-int16x8", [], cache)
    corrected = build(model, "int8-bias-corrected", "android-arm64-int8", ["--converter", "onnx2tf"], cache, "on")
    mixed = build(model, "mixed-bias-corrected", "android-arm64-int8", [
        "--converter", "onnx2tf", "--fallback", "auto", "--task", "regress", "--min-sqnr", "40", "--max-size",
        str(int(1.5 * size)), "--max-latency-ratio", "2"], cache, "on")
    theirs = onnx2tf_files(model, cache)
    rows = [_own(model, "INT8, onnx2tf's own file (by hand)", theirs["int8"], size, latency, "all int8")]
    rows += [_row(model, f"INT8, edgekit {conv}, --equalize off", r["report"], size, latency)
             for conv, r in int8.items()]
    rows.append(_own(model, "16x8, onnx2tf's own file", theirs["16x8"], size, latency, "all int16x8"))
    rows.append(_row(model, "int16x8 target (whole model)", whole["report"], size, latency))
    rows.append(_row(model, "INT8 + bias correction (--equalize on)", corrected["report"], size, latency))
    rows.append(_row(model, "mixed: INT8 + bias correction + ladder (--min-sqnr 40)", mixed["report"], size,
                     latency))
    return rows


def _own(model: str, what: str, theirs: dict, size: int, latency: float, choices: str) -> str:
    return (f"| {model} | {what} | {theirs['sqnr_db']:.1f} | {theirs['bytes']:,} | {theirs['bytes'] / size:.2f} | "
            f"{theirs['latency_ms']:.3f} | {theirs['latency_ms'] / latency:.2f} | {choices} |")


def _row(model: str, what: str, report: dict | None, size: int, latency: float) -> str:
    if report is None:
        return f"| {model} | {what} | failed | | | | | |"
    sqnr = min(o["sqnr_db"] for o in report["drift"]["outputs"])
    own_size, own_latency = report["size"]["device_bytes"], report["latency_ms"]["host"]
    rows = report.get("layers") or []
    moved = [f"{r['module']} -> {r['precision']}" for r in rows if "back-off" not in (r.get("chosen_because") or "")
             and (r["precision"] not in ("int8", "int16x8") or "mixed precision" in (r.get("chosen_because") or ""))]
    backed = [r["module"] for r in rows if "back-off" in (r.get("chosen_because") or "")]
    moved += [f"{', '.join(backed)} -> INT8 weights, float compute; the rest INT8"] if backed else []
    concats = [w.split(" ", 1)[0] for w in report["warnings"] if "kept in float" in w and " joins " in w]
    moved += [f"{', '.join(concats)} (concats) -> float32"] if concats else []
    choices = ", ".join(moved) if moved else ("all int16x8" if "int16x8" in what else "all int8")
    return (f"| {model} | {what} | {sqnr:.1f} | {own_size:,} | {own_size / size:.2f} | {own_latency:.3f} "
            f"| {own_latency / latency:.2f} | {choices} |")


def table(rows: list[str]) -> str:
    return markdown_table(["model", "build", "output SQNR vs PyTorch (dB)", "device bytes", "size / INT8",
                           "host latency (ms)", "latency / INT8", "per-layer choices"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".mixed")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "precision.md")
    args = parser.parse_args(argv)
    rows = []
    for model in args.models.split(","):
        rows += rows_for(model, args.cache)
        print("\n".join(rows[-7:]), flush=True)
    write_section(args.out, "bench_mixed", table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
