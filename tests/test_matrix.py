"""Build matrices (edgekit/matrix_file.py, edgekit/matrix_run.py): the file checked completely before any build,
cells that are ordinary builds with their own bundles, and one exit code for all of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgekit
from edgekit.cli import main
from edgekit.errors import ConfigError
from edgekit.matrix_file import load_matrix
from edgekit.matrix_run import aggregate

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = """
[[models]]
name = "digits"
model = "examples/01_android_int8/digits_cnn.pt2"
calibration = "examples/01_android_int8/calibration.npz"
eval = "examples/01_android_int8/eval.npz"
max_drop = 1.0                      # optional per-model thresholds

[axes]
target = ["android-arm64-int8", "android-arm64-fp16"]
calibration_method = ["minmax", "percentile"]
"""


def test_the_minimal_file_builds_every_cell_once(tmp_path: Path, monkeypatch):
    """2 targets x 2 methods, but a calibration method does not apply to fp16: three cells, each a bundle."""
    monkeypatch.chdir(ROOT)  # the file's paths are the repository's, as written in the issue
    (tmp_path / "matrix.toml").write_text(MINIMAL)
    result = CliRunner().invoke(main, ["matrix", str(tmp_path / "matrix.toml"), "--out", str(tmp_path / "out"),
                                       "--jobs", "2", "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "matrix.json").read_text())
    assert json.loads(result.stdout) == written and written["schema"] == "edgekit.matrix/1"
    cells = {c["name"]: c for c in written["cells"]}
    assert list(cells) == ["android-arm64-int8-minmax", "android-arm64-int8-percentile", "android-arm64-fp16"]
    assert cells["android-arm64-fp16"]["target"] == "android-arm64-fp16"
    assert "calibration_method" not in cells["android-arm64-fp16"]
    for cell in cells.values():
        report = json.loads((tmp_path / "out" / cell["bundle"] / "report.json").read_text())
        assert cell["model"] == "digits" and cell["exit_code"] == 0 and cell["passed"]
        assert cell["drift"]["accuracy_drop"] == report["drift"]["accuracy_drop"] <= 1.0
        assert cell["size"]["device_bytes"] == report["size"]["device_bytes"]
        assert report["drift"]["thresholds"]["max_drop"] == 1.0
    percentile = json.loads((tmp_path / "out" / "digits" / "android-arm64-int8-percentile" / "report.json").read_text())
    assert percentile["quantization"]["method"] == "percentile"
    assert cells["android-arm64-fp16"]["size"]["device_bytes"] > cells["android-arm64-int8-minmax"]["size"][
        "device_bytes"]


def test_a_failing_cell_does_not_stop_the_others(digits_files, tmp_path: Path):
    matrix = tmp_path / "m.toml"
    matrix.write_text(f"""
[[models]]
name = "digits"
model = "{digits_files['pt2']}"
calibration = "{digits_files['calib']}"

[axes]
target = ["android-arm64-fp32"]
io = ["float32", "int8"]
emulator = "host"
""")
    result = edgekit.matrix(matrix, tmp_path / "out", jobs=1)
    good, bad = result.cells
    assert (good["name"], good["exit_code"], good["passed"]) == ("android-arm64-fp32-float32-host", 0, True)
    assert (bad["exit_code"], bad["bundle"], bad["drift"]) == (2, None, None)
    assert bad["error"] == ("error: --io int8 (full-integer I/O) needs an INT8 target; android-arm64-fp32 is fp32")
    assert result.exit_code == 2 and (tmp_path / "out" / good["bundle"] / "model.tflite").is_file()


def test_the_exit_code_is_the_worst_cell_in_the_contract_order():
    assert aggregate([0, 3, 2, 0]) == 2 and aggregate([3, 1, 2]) == 1 and aggregate([0, 3]) == 3
    assert aggregate([0, 0]) == 0 and aggregate([0, 130]) == 1


@pytest.mark.parametrize(("text", "message"), [
    (MINIMAL.replace("android-arm64-fp16", "android-arm64-fp15"), "unknown target 'android-arm64-fp15'"),
    (MINIMAL.replace("eval.npz", "missing.npz"), "examples/01_android_int8/missing.npz does not exist"),
    (MINIMAL + MINIMAL.split("[axes]")[0], "duplicate model name digits"),
    (MINIMAL.replace('"percentile"]', '"kl"]'), "calibration_method = 'kl' is not one of minmax, percentile"),
    (MINIMAL.replace("max_drop = 1.0", "max_dorp = 1.0"), "unknown keys max_dorp"),
    (MINIMAL + '\n[[exclude]]\ntarget = "android-arm64-int8"\n[[exclude]]\ntarget = "android-arm64-fp16"\n',
     "every cell is excluded"),
])
def test_a_bad_matrix_file_is_refused_before_any_build(text, message, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    (tmp_path / "matrix.toml").write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        edgekit.matrix(tmp_path / "matrix.toml", tmp_path / "out")
    assert caught.value.exit_code == 2 and not (tmp_path / "out").exists()
    result = CliRunner().invoke(main, ["matrix", str(tmp_path / "matrix.toml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "hint:" in result.stderr


def test_exclude_and_include_shape_the_cells(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    (tmp_path / "matrix.toml").write_text(MINIMAL + """
[[exclude]]
target = "android-arm64-int8"
calibration_method = "percentile"

[[include]]
target = "jetson-orin-int8"
calibration_method = "entropy"
""")
    cells = [c.name for c in load_matrix(tmp_path / "matrix.toml").cells]
    assert cells == ["android-arm64-int8-minmax", "android-arm64-fp16", "jetson-orin-int8-entropy"]


def test_resume_rebuilds_only_the_missing_or_changed_cells(digits_files, tmp_path: Path):
    import shutil

    matrix = tmp_path / "m.toml"
    matrix.write_text(f"""
[[models]]
name = "digits"
model = "{digits_files['pt2']}"
calibration = "{digits_files['calib']}"
eval = "{digits_files['eval']}"

[axes]
target = "android-arm64-fp32"
emulator = "host"
seed = [0, 1]
""")
    first = edgekit.matrix(matrix, tmp_path / "out", jobs=2)
    assert first.exit_code == 0 and [c["resumed"] for c in first.cells] == [False, False]
    kept = tmp_path / "out" / first.cells[1]["bundle"] / "manifest.json"
    stamp = kept.stat().st_mtime_ns
    shutil.rmtree(tmp_path / "out" / first.cells[0]["bundle"])  # an interrupted run lost this one
    lines: list[str] = []
    again = edgekit.matrix(matrix, tmp_path / "out", jobs=2, resume=True, progress=lines.append)
    assert [c["resumed"] for c in again.cells] == [False, True] and again.exit_code == 0
    assert kept.stat().st_mtime_ns == stamp  # not rebuilt
    assert "--resume: 1 of 2 cells already built from the same inputs, kept" in lines
    assert again.cells[1]["drift"] == first.cells[1]["drift"] and again.cells[1]["size"] == first.cells[1]["size"]
    matrix.write_text(matrix.read_text().replace('eval = "', 'max_drop = 2.0\neval = "'))  # a changed input
    changed = edgekit.matrix(matrix, tmp_path / "out", jobs=2, resume=True)
    assert [c["resumed"] for c in changed.cells] == [False, False]
