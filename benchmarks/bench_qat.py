"""Quantization-aware fine-tuning beside post-training INT8, on the zoo's trained models (benchmarks/zoo/trained.py):
per path, the accuracy drop of the plain INT8 build and of the `--qat` build, the device model against the QAT
simulation, and what QAT costs (seconds per 1,000 steps) beside the whole build.

    python -m benchmarks.bench_qat [--only mobilenet_v2,deit_tiny] [--paths litert-torch,onnx2tf,onnxruntime,jetson]
                                   [--steps 300] [--out FILE.json]

Each build is the `edgekit build` CLI with 200 training samples as calibration, the held-out samples with labels as
eval, `--emulator host`, thresholds open; the QAT build adds `--qat STEPS --train` (the 4,000 labelled training
samples). The models are trained on first use (cached under benchmarks/zoo/.trained). `--distill` adds CREPE tiny
(the published weights, no labels: distillation alone) with `--task regress`, judged by output SQNR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.zoo import trained

ROOT = Path(__file__).resolve().parents[1]
PATHS = {"onnx2tf": ("android-arm64-int8", "onnx2tf"), "litert-torch": ("android-arm64-int8", "litert-torch"),
         "onnxruntime": ("onnxruntime-arm64-int8", None), "jetson": ("jetson-orin-int8", None)}


def build(model: str, path: str, files: dict[str, Path], out: Path, extra: list[str]) -> dict:
    """One `edgekit build`: {"exit", "seconds", "report"}."""
    target, converter = PATHS[path]
    command = [sys.executable, "-m", "edgekit.cli", "build", model, "--target", target, "--calibration",
               str(files["calibration"]), "--eval", str(files["eval"]), "--out", str(out), "--force", "--emulator",
               "host", "--max-drop", "100", "--min-agreement", "0", "--min-sqnr", "-100", "--json", *extra]
    if converter:
        command += ["--converter", converter]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=7200,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    report = json.loads(done.stdout) if done.returncode in (0, 3) else None
    if report is None:
        print(done.stderr[-2000:], file=sys.stderr)
    return {"exit": done.returncode, "seconds": round(time.perf_counter() - start, 1), "report": report}


def cell(model: str, path: str, files: dict[str, Path], steps: int, work: Path, task: list[str]) -> dict:
    plain = build(model, path, files, work / "plain", task)
    qat_extra = [*task, "--qat", str(steps)] + (["--train", str(files["train"])] if "train" in files else [])
    qat = build(model, path, files, work / "qat", qat_extra)
    return {"model": model, "path": path, "plain": _row(plain), "qat": _row(qat)}


def _row(result: dict) -> dict:
    report = result["report"] or {}
    drift, block = report.get("drift") or {}, report.get("qat") or {}
    outputs = drift.get("outputs") or [{}]
    row = {"exit": result["exit"], "build_s": result["seconds"], "accuracy_drop": drift.get("accuracy_drop"),
           "sqnr_db": outputs[0].get("sqnr_db"), "convert_s": (report.get("timings_s") or {}).get("convert")}
    if block:
        device = block["simulation_vs_device"]["outputs"][0]
        row.update(qat_s=block["seconds"], steps_done=block["steps_done"],
                   qat_s_per_1000_steps=round(block["seconds"] / max(block["steps_done"], 1) * 1000, 1),
                   simulation_before_db=block["simulation_before"]["outputs"][0]["sqnr_db"],
                   simulation_after_db=block["simulation_after"]["outputs"][0]["sqnr_db"],
                   simulation_vs_device_db=device["sqnr_db"], simulation_vs_device_agreement=device["top1_agreement"])
    return row


def data_files(name: str, folder: Path) -> dict[str, Path]:
    data = trained.dataset(name)
    files = {"calibration": folder / "calibration.npz", "eval": folder / "eval.npz", "train": folder / "train.npz"}
    np.savez(files["calibration"], x=data["x_train"][:trained.CALIBRATION])
    np.savez(files["eval"], x=data["x_test"], y=data["y_test"])
    np.savez(files["train"], x=data["x_train"], y=data["y_train"])
    return files


def crepe_files(folder: Path) -> dict[str, Path]:
    from benchmarks.zoo.published import crepe_frames

    files = {"calibration": folder / "calibration.npz", "eval": folder / "eval.npz"}
    np.savez(files["calibration"], x=crepe_frames(400, "train", seed=0))
    np.savez(files["eval"], x=crepe_frames(300, "test", seed=1))
    return files


HEADER = ("model", "path", "INT8 drop (points)", "QAT drop (points)", "INT8 SQNR dB", "QAT SQNR dB",
          "simulation vs device dB / agreement", "QAT s per 1,000 steps", "QAT s", "build s (INT8 / QAT)")


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        p, q = r["plain"], r["qat"]
        cells = [r["model"], r["path"], _f(p["accuracy_drop"], "+.2f"), _f(q["accuracy_drop"], "+.2f"),
                 _f(p["sqnr_db"], ".1f"), _f(q["sqnr_db"], ".1f"),
                 _f(q.get("simulation_vs_device_db"), ".1f") + " / "
                 + _f(q.get("simulation_vs_device_agreement"), ".3f"),
                 _f(q.get("qat_s_per_1000_steps"), ".0f"), _f(q.get("qat_s"), ".0f"),
                 f"{p['build_s']:.0f} / {q['build_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="mobilenet_v2,deit_tiny")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--distill", action="store_true", help="add CREPE tiny, distillation only")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-qat-") as tmp:
        for name in args.only.split(","):
            trained.train(name)
            files = data_files(name, Path(tmp))
            for path in args.paths.split(","):
                rows.append(cell(f"benchmarks.zoo.trained:{name}_trained", path, files, args.steps,
                                 Path(tmp) / name / path, []))
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        if args.distill:
            files = crepe_files(Path(tmp))
            for path in args.paths.split(","):
                rows.append(cell("benchmarks.zoo.published:crepe_tiny", path, files, args.steps,
                                 Path(tmp) / "crepe" / path, ["--task", "regress"]))
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
