"""Shared-step reuse in `edgekit matrix`: the same cells built by the matrix (`--jobs 1`, step cache on) and one by
one with `edgekit build` (no cache), in the same run. The table goes to docs/matrix.md.

    python -m benchmarks.bench_matrix [--models digits,tcn_1d,m5_audio] [--cache DIR] [--out FILE]

Models: the shipped digits CNN (examples/01_android_int8) and two trained zoo models (benchmarks/zoo/trained.py:
the 1-D TCN on log-mel keywords and the M5 raw-waveform CNN), with their benchmark data. Axes: four Android
targets through onnx2tf (int8, int16x8, fp16, fp32) x two calibration methods (minmax, percentile; they apply to
the calibrated targets only): six cells a model. The ratio is matrix time / one-by-one time, measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("digits", "tcn_1d", "m5_audio")
AXES = """
[axes]
target = ["android-arm64-int8", "android-arm64-int16x8", "android-arm64-fp16", "android-arm64-fp32"]
calibration_method = ["minmax", "percentile"]
converter = "onnx2tf"
emulator = "host"
"""


def _model_entry(name: str, cache: Path) -> str:
    if name == "digits":
        folder = ROOT / "examples" / "01_android_int8"
        model, calibration, evaluation = folder / "digits_cnn.pt2", folder / "calibration.npz", folder / "eval.npz"
    else:
        from benchmarks.bench_mixed import _sources

        model, calibration, evaluation = _sources(name, cache / "data")
    return (f'[[models]]\nname = "{name}"\nmodel = "{model}"\ncalibration = "{calibration}"\neval = "{evaluation}"\n'
            'max_drop = 100.0\nmin_agreement = 0.0\n')


def run(models: list[str], cache: Path) -> dict:
    result_file = cache / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    from edgekit.build_matrix.file import load_matrix
    from edgekit.build_matrix.run import cell_command

    cache.mkdir(parents=True, exist_ok=True)
    matrix = cache / "matrix.toml"
    matrix.write_text("\n".join(_model_entry(m, cache) for m in models) + AXES)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shutil.rmtree(cache / "matrix", ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgekit.cli", "matrix", str(matrix), "--out", str(cache / "matrix"),
                    "--jobs", "1"], check=False, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    with_matrix = time.perf_counter() - start
    cells = json.loads((cache / "matrix" / "matrix.json").read_text())["cells"]
    one_by_one, plain_env = {}, {k: v for k, v in env.items() if k != "EDGEKIT_STEP_CACHE"}
    for cell in load_matrix(matrix).cells:
        start = time.perf_counter()
        subprocess.run(cell_command(cell, cache / "plain"), check=False, cwd=ROOT, env=plain_env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        one_by_one[cell.bundle] = time.perf_counter() - start
    result = {"matrix_s": round(with_matrix, 1), "one_by_one_s": round(sum(one_by_one.values()), 1),
              "cells": [{"bundle": c["bundle"], "exit_code": c["exit_code"], "reused": c["reused_steps"],
                         "peak_rss_mb": c["peak_rss_mb"],
                         "seconds": c["seconds"], "plain_seconds": round(one_by_one.get(f"{c['model']}/{c['name']}",
                                                                                         0.0), 1)} for c in cells]}
    result_file.write_text(json.dumps(result, indent=1))
    return result


def table(result: dict) -> str:
    steps = ("export", "conversion", "calibration", "reference")
    rows = [f"| {c['bundle']} | {c['exit_code']} | {', '.join(c['reused']) or 'none'} | {c['peak_rss_mb']:,} | "
            f"{c['seconds']:.1f} | {c['plain_seconds']:.1f} |" for c in result["cells"]]
    counts = ", ".join(f"{step} {sum(step in c['reused'] for c in result['cells'])}" for step in steps)
    rows.append(f"| **all {len(result['cells'])} cells** | | reused: {counts} | | **{result['matrix_s']:.1f}** | "
                f"**{result['one_by_one_s']:.1f}** (ratio {result['matrix_s'] / result['one_by_one_s']:.2f}) |")
    return markdown_table(["cell", "exit", "steps reused", "peak MB", "matrix --jobs 1 (s)",
                           "edgekit build alone (s)"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".matrix")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "matrix.md")
    args = parser.parse_args(argv)
    result = run(args.models.split(","), args.cache)
    text = table(result)
    print(text)
    write_section(args.out, "bench_matrix", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
