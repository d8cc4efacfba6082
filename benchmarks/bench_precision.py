"""Every Android precision side by side: size, drift and host latency of the same models in fp32, fp16, int8,
int16x8, dynamic-int8 and w4, as the table in docs/precision.md.

    python -m benchmarks.bench_precision [--models digits,yolo_style_dfl,tcn_1d] [--cache DIR] [--out FILE]

Each cell is one `edgekit build` (converter litert-torch, `--emulator host`, thresholds open so the numbers are
always measured) in its own process; its report.json is kept in the cache folder, so a stopped run resumes. The
digits CNN is the shipped, trained example (360 eval samples, accuracy drop meaningful); the zoo architectures have
random weights and 32 random samples (SQNR says how each precision treats the architecture, not a task's accuracy).
Host latency is LiteRT's median per sample on this x86 host, with its reference kernels where XNNPACK has none
(16x8): a phone's numbers differ, the ratios between precisions are the point.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import cached_build, markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "01_android_int8"
PRECISIONS = ("fp32", "fp16", "int8", "int16x8", "dynamic-int8", "w4")
MODELS = ("digits", "yolo_style_dfl", "tcn_1d")


def _sources(model: str, cache: Path) -> tuple[str, Path, Path]:
    if model == "digits":
        return str(EXAMPLE / "digits_cnn.pt2"), EXAMPLE / "calibration.npz", EXAMPLE / "eval.npz"
    from benchmarks.zoo.architectures import get
    from benchmarks.zoo.run import data_files

    calib, evaluation = data_files(get(model), cache / model / "data")
    return f"benchmarks.zoo.architectures:{model}_model", calib, evaluation


def run_cell(model: str, precision: str, cache: Path) -> dict:
    """One build (or its cached result): {"exit", "report", "stderr", "seconds"}."""
    source, calib, evaluation = _sources(model, cache)
    return cached_build(cache / model / precision, [
        source, "--target", f"android-arm64-{precision}", "--calibration", str(calib), "--eval", str(evaluation),
        "--emulator", "host", "--converter", "litert-torch", "--max-drop", "100", "--min-agreement", "0",
        "--min-sqnr", "0"])


def _layers(report: dict) -> str:
    counts: dict[str, int] = {}
    for row in report.get("layers") or []:
        counts[row["precision"]] = counts.get(row["precision"], 0) + 1
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "-"


def row(model: str, precision: str, result: dict, fp32: dict | None) -> str:
    report = result["report"]
    if report is None:
        return f"| {model} | {precision} | exit {result['exit']} | | | | | | | |"
    base = (fp32 or {}).get("report") or report
    quantized = report["quantization"]
    q_sqnr = min(o["sqnr_db"] for o in quantized["outputs"]) if quantized else None
    sqnr = min(o["sqnr_db"] for o in report["drift"]["outputs"])
    size, latency = report["size"]["device_bytes"], report["latency_ms"]["host"]
    size_ratio, latency_ratio = size / base["size"]["device_bytes"], latency / base["latency_ms"]["host"]
    drop = report["drift"]["accuracy_drop"]
    return (f"| {model} | {precision} | {'-' if q_sqnr is None else f'{q_sqnr:.1f}'} | {sqnr:.1f} "
            f"| {'-' if drop is None else f'{drop:.2f}'} | {size:,} | {size_ratio:.2f} | {latency:.3f} "
            f"| {latency_ratio:.2f}{' (slower than fp32)' if latency_ratio > 1.1 else ''} | {_layers(report)} |")


def table(rows: list[str]) -> str:
    return markdown_table(["model", "precision", "quantization SQNR (dB)", "SQNR vs PyTorch (dB)",
                           "accuracy drop (points)", "device bytes", "size / fp32", "host latency (ms)",
                           "latency / fp32", "layers (precision: count)"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".precision")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "precision.md")
    args = parser.parse_args(argv)
    rows = []
    for model in args.models.split(","):
        results = {p: run_cell(model, p, args.cache) for p in PRECISIONS}
        for precision in PRECISIONS:
            rows.append(row(model, precision, results[precision], results["fp32"]))
            print(rows[-1], flush=True)
    write_section(args.out, "bench_precision", table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
