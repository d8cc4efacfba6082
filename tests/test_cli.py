"""The edgekit command: exit codes, messages, and that a failed build leaves nothing behind.

Builds that get as far as measuring pass `--emulator host`; those that stop earlier run without `--emulator`, as a
user would, with the (shared) emulator cache pointed at an empty folder so that its state cannot matter.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.inputs.model import sha256_file


def run(*args: str) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_targets_table_lists_the_shipped_targets():
    result = run("targets", "--json")
    rows = json.loads(result.stdout)
    assert result.exit_code == 0
    expected = {"name": "android-arm64-int8", "platform": "android", "format": "tflite", "precision": "int8",
                "runtime": "litert", "route": "litert", "installed": True, "missing": [],
                "emulators": ["host", "arm64"]}
    assert any(expected.items() <= row.items() for row in rows)
    jetson = next(row for row in rows if row["name"] == "jetson-orin-int8")
    assert jetson["route"] == "tensorrt" and jetson["emulators"] == ["host"] and jetson["installed"]


def test_help_starts_without_heavy_imports():
    code = "import sys, edgekit.cli; print(any(m in sys.modules for m in ('torch', 'tensorflow', 'onnx2tf')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False"


@pytest.fixture()
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "dist" / "bundle"


def _bad_input_cases(files: dict[str, Path], tmp: Path) -> list[tuple[list[str], str, str]]:
    np.save(tmp / "nhwc.npy", np.zeros((8, 8, 8, 1), np.float32))
    nan = np.zeros((8, 1, 8, 8), np.float32)
    nan[0, 0, 0, 0] = np.nan
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    np.save(tmp / "small.npy", np.zeros((8, 1, 28, 28), np.float32))
    (tmp / "corrupt.pt2").write_bytes(b"garbage")
    pt2, calib = files["pt2"], files["calib"]
    return [
        (["missing.pt2", "--target", "android-arm64-int8", "--calibration", calib],
         "error: model file missing.pt2 does not exist", "hint: give a .pt2"),
        ([tmp / "corrupt.pt2", "--target", "android-arm64-int8", "--calibration", calib],
         "is not a .pt2 archive (not a zip file)", "hint: save it with torch.export.save"),
        ([pt2, "--target", "android-arm64-int3", "--calibration", calib],
         "error: unknown target 'android-arm64-int3'",
         "hint: known targets: android-arm64-dynamic-int8, android-arm64-executorch-fp32"),
        ([pt2, "--target", "android-arm64-int8", "--calibration", tmp / "nhwc.npy"],
         "samples have shape (8, 8, 1), the model expects (1, 8, 8)", "x.transpose(0, 3, 1, 2)"),
        ([pt2, "--target", "android-arm64-int8", "--calibration", tmp / "small.npy"],
         "samples have shape (1, 28, 28), the model expects (1, 8, 8)", "hint: give data in the model's own"),
        ([pt2, "--target", "android-arm64-int8", "--calibration", tmp / "nan.npy"],
         "holds 1 NaN/inf values", "hint: clean or drop those samples"),
        ([pt2, "--target", "android-arm64-int8", "--calibration", tmp / "empty.npy"],
         "is empty", "hint: give at least one sample"),
        ([pt2, "--target", "android-arm64-int8"],
         "error: no calibration data given", "hint: pass --calibration"),
        ([pt2, "--target", "android-arm64-int8", "--calibration", calib, "--eval", tmp / "nhwc.npy"],
         "eval data", "x.transpose(0, 3, 1, 2)"),
    ]


def test_bad_input_is_one_message_with_a_hint_exit_2_and_nothing_written(digits_files, emulator_not_set_up,
                                                                          tmp_path: Path):
    for i, (args, message, hint) in enumerate(_bad_input_cases(digits_files, tmp_path)):
        out = tmp_path / f"out{i}"
        result = run("build", *args, "--out", out)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr and hint in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert not out.exists()
    assert [p for p in leftovers(tmp_path) if p.startswith(".out")] == []


def test_unsupported_operator_exits_2_naming_it(emulator_not_set_up, tmp_path: Path):
    result = run("build", "tests.helpers:inverse_model", "--target", "android-arm64-int8",
                 "--input-shape", "1,4,4", "--calibration", "tests.helpers:square_matrices", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "operator linalg_inv" in result.stderr and "has no ONNX export" in result.stderr
    assert leftovers(tmp_path) == []


def test_existing_out_needs_force_and_is_untouched(digits_files, emulator_not_set_up, tmp_path: Path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("old bundle")
    result = run("build", digits_files["pt2"], "--target", "android-arm64-int8", "--calibration",
                 digits_files["calib"], "--out", out)
    assert result.exit_code == 2 and "already exists" in result.stderr and "--force" in result.stderr
    failed = run("build", digits_files["pt2"], "--target", "android-arm64-int8", "--calibration",
                 tmp_path / "none.npz", "--out", out, "--force")
    assert failed.exit_code == 2
    assert leftovers(out) == ["keep.txt"] and leftovers(tmp_path) == ["bundle"]


def test_build_through_the_cli_prints_the_report_and_json(digits_files, tmp_path: Path):
    out = tmp_path / "bundle"
    (out).mkdir()
    (out / "stale.txt").write_text("replaced by a finished build")
    result = run("build", digits_files["pt2"], "--target", "android-arm64-int8", "--calibration",
                 digits_files["calib"], "--eval", digits_files["eval"], "--out", out, "--force", "--json",
                 "--emulator", "host")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == "edgekit.report/1" and report["drift"]["top1_agreement"] >= 0.99
    for line in ("top-1 agreement", "conversion", "quantization", "total drift", "PASSED", "exporting to ONNX"):
        assert line in result.stderr
    assert "stale.txt" not in leftovers(out) and "model.tflite" in leftovers(out)
    pins = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest(), sha256_file(out / "check.py")
    assert f"manifest sha256: {pins[0]}" in result.stderr and f"check.py sha256: {pins[1]}" in result.stderr
    checked = run("check", out, "--eval", digits_files["eval"])
    assert checked.exit_code == 0 and "PASSED" in checked.stdout
    inspected = run("inspect", out)
    assert inspected.exit_code == 0 and "CONV_2D" in inspected.stdout


@pytest.mark.slow
def test_drift_over_threshold_exits_3_and_writes_a_failed_bundle(digits_files, tmp_path: Path):
    out = tmp_path / "bundle"
    result = run("build", "tests.helpers:broken_digits_cnn", "--target", "android-arm64-int8", "--calibration",
                 digits_files["calib"], "--eval", digits_files["eval"], "--out", out, "--max-drop", "1",
                 "--emulator", "host", "--equalize", "off")
    assert result.exit_code == 3
    assert "FAILED" in result.stderr and "drop" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["drift"]["passed"] is False and report["drift"]["accuracy_drop"] > 1.0
    assert (out / "model.tflite").is_file() and (out / "check.py").is_file()


def test_check_of_a_folder_that_is_not_a_bundle(tmp_path: Path):
    result = run("check", tmp_path)
    assert result.exit_code == 2 and "is not an edgekit bundle" in result.stderr
