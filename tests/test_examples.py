"""Every example runs end to end, the way a user runs it: its run.sh, with the venv's `edgekit` on PATH."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, timeout: int = 900, **env: object) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   **{k: str(v) for k, v in env.items()}}
    return subprocess.run(["bash", str(EXAMPLES / name / "run.sh"), *args], capture_output=True, text=True,
                          env=environment, timeout=timeout)


@pytest.fixture(scope="module")
def example_01(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """examples/01 run once (host-measured, so the emulator cache does not matter); 04 uses it as its baseline."""
    out = tmp_path_factory.mktemp("examples") / "01"
    return run_example("01_android_int8", "--emulator", "host", OUT=out), out


def printed(pattern: str, text: str) -> tuple[str, ...]:
    """The groups of the one line of `text` that `pattern` matches in full."""
    found = [m for m in (re.fullmatch(pattern, line.strip()) for line in text.splitlines()) if m]
    assert len(found) == 1, f"{pattern!r} matches {len(found)} lines of:\n{text[-3000:]}"
    return found[0].groups()


@pytest.mark.slow
def test_01_android_int8_builds_and_prints_the_drift_report(example_01):
    done, out = example_01
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("target android-arm64-int8  model digits_cnn", "quantization  output", "PASSED", f"bundle: {out}"):
        assert line in done.stderr, line
    report = json.loads((out / "report.json").read_text())
    drift = report["drift"]
    assert drift["passed"] and drift["accuracy_drop"] <= 0.5
    # INT8 figures pass through float rounding (calibration ranges): the printed ones must be the report's own
    accuracy = printed(r"accuracy\s+reference (\d\.\d{4})  device (\d\.\d{4})  drop (\d+\.\d\d) points \(max 1\.0\)",
                       done.stderr)
    assert accuracy == (f"{drift['reference_accuracy']:.4f}", f"{drift['device_accuracy']:.4f}",
                        f"{drift['accuracy_drop']:.2f}")
    assert drift["reference_accuracy"] >= 0.99  # the shipped float model
    agreement = printed(r"top-1 agreement (\d\.\d{4}) \(min 0\.99\) over (\d+) samples", done.stderr)
    assert agreement == (f"{drift['top1_agreement']:.4f}", "360") and drift["top1_agreement"] >= 0.99
    assert {"model.tflite", "check.py", "monitor.py", "data_stats.json", "report.html"} <= {p.name for p in
                                                                                          out.iterdir()}


@pytest.mark.slow
def test_02_jetson_int8_builds_a_qdq_onnx_with_engine_scripts(tmp_path: Path):
    out = tmp_path / "02"
    done = run_example("02_jetson_int8", OUT=out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "target jetson-orin-int8" in done.stderr and "PASSED" in done.stderr
    assert {"model.qdq.onnx", "build_engine.sh", "build_engine.py", "check.py"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_04_ci_gate_passes_a_rebuild_of_the_baseline(example_01, tmp_path: Path):
    _, baseline = example_01
    done = run_example("04_ci_gate", OUT=tmp_path / "04", BASELINE=baseline, EMULATOR="host")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ci-gate: candidate built within its drift thresholds" in done.stdout
    assert "PASSED: no regression" in done.stdout and "ci-gate: PASSED" in done.stdout
    assert "building one" not in done.stdout  # the given baseline was used
    assert (tmp_path / "04" / "candidate" / "report.json").exists()


def test_04_ci_gate_stops_with_exit_2_on_bad_input(tmp_path: Path):
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    (baseline / "report.json").write_text("{}")  # only looked at by `edgekit diff`, which is never reached
    done = run_example("04_ci_gate", timeout=300, OUT=tmp_path / "04", BASELINE=baseline, MODEL=tmp_path / "no.pt2",
                       EMULATOR="host")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: model file {tmp_path / 'no.pt2'} does not exist" in done.stderr
    assert "ci-gate: FAILED, bad input (exit 2)" in done.stderr
    assert not (tmp_path / "04" / "candidate").exists()


@pytest.mark.slow
def test_03_compress_prunes_and_clusters_through_the_cli(tmp_path: Path):
    out = tmp_path / "03"
    done = run_example("03_compress", "--emulator", "host", OUT=out)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    size = report["size"]
    assert size["device_gzip_bytes"] * 8 <= size["baseline_float_gzip_bytes"]
    # recovery fine-tunes on the spot, so the sizes and values differ between CPUs: the printed ones are the report's
    line = next((line for line in done.stderr.splitlines() if line.startswith("compression   gzip 1/")), "")
    [ratio] = re.findall(r"^compression   gzip 1/(\d+\.\d) of the float32 original;", line) or [None]
    assert ratio == f"{size['baseline_float_gzip_bytes'] / size['device_gzip_bytes']:.1f}", line
    [row] = [r for r in report["compression"]["per_layer"] if r["module"] == "features.3"]
    assert f"features.3: sparsity 0.50, {row['device_max_distinct']} values/channel on the device" in line
    assert row["device_sparsity"] == pytest.approx(0.5, abs=1e-9) and 2 <= row["device_max_distinct"] <= 16
