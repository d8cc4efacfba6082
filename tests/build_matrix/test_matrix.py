"""Build matrices (edgekit/build_matrix/file.py, edgekit/build_matrix/run.py): the file checked completely before any
build, cells that are ordinary builds with their own bundles, and one exit code for all of them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

import edgekit
from edgekit.build_matrix.file import load_matrix
from edgekit.build_matrix.run import aggregate, validate_matrix
from edgekit.cli import main
from edgekit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
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


def _digits_matrix(digits_files, folder: Path, axes: str, with_eval: bool = False) -> Path:
    """A matrix file of the digits model: its calibration data (and eval data when asked), then `axes`."""
    model, calibration, evaluation = digits_files["pt2"], digits_files["calib"], digits_files["eval"]
    lines = ["[[models]]", 'name = "digits"', f'model = "{model}"', f'calibration = "{calibration}"',
             *([f'eval = "{evaluation}"'] if with_eval else []), "", "[axes]", axes, ""]
    matrix = folder / "m.toml"
    matrix.write_text("\n".join(lines))
    return matrix


@pytest.fixture(scope="module")
def minimal_local(tmp_path_factory) -> tuple[Path, object]:
    """The minimal file built on this machine with --jobs 2: (its folder, the CLI result)."""
    folder = tmp_path_factory.mktemp("minimal")
    (folder / "matrix.toml").write_text(MINIMAL)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the file's paths are the repository's, as written in the issue
        result = CliRunner().invoke(main, ["matrix", str(folder / "matrix.toml"), "--out", str(folder / "out"),
                                           "--jobs", "2", "--json"])
    return folder, result


@pytest.mark.slow
def test_the_minimal_file_builds_every_cell_once(minimal_local):
    """2 targets x 2 methods, but a calibration method does not apply to fp16: three cells, each a bundle."""
    tmp_path, result = minimal_local
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "matrix.json").read_text())
    assert json.loads(result.stdout) == written and written["schema"] == "edgekit.matrix/1"
    validate_matrix(written)  # the shipped schema, edgekit/schema/matrix.schema.json
    broken = {**written, "cells": [{**written["cells"][0], "exit_code": "0"}]}
    with pytest.raises(jsonschema.ValidationError):
        validate_matrix(broken)
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
    page = (tmp_path / "out" / "matrix.html").read_text()
    for name in cells:
        assert f'<a href="digits/{name}/report.html">report.html</a>' in page
    pivot = page[page.index('id="pivot"'):page.index('id="cells"')]
    assert "<th>android-arm64-int8</th><th>android-arm64-fp16</th>" in pivot
    assert '<td class="pass">2/2 passed, worst SQNR' in pivot and '<td class="pass">1/1 passed' in pivot


@pytest.mark.slow
def test_a_failing_cell_does_not_stop_the_others(digits_files, tmp_path: Path):
    matrix = _digits_matrix(digits_files, tmp_path,
                            'target = ["android-arm64-fp32"]\nio = ["float32", "int8"]\nemulator = "host"')
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
    (MINIMAL.split("[axes]")[0] + '[axes]\ncalibration_method = ["minmax"]\n', "a cell of digits has no target"),
    (MINIMAL.replace('target = ["android-arm64-int8", "android-arm64-fp16"]', "target = [8]"),
     "target 8 is not a target name"),
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


def test_settings_that_do_not_apply_collapse_their_cells(tmp_path: Path, monkeypatch):
    """--percentile only with the percentile method, ladder bounds only with --fallback auto, equalization only on
    INT8: the build would ignore or refuse them, so the matrix never makes cells of them."""
    monkeypatch.chdir(ROOT)
    (tmp_path / "matrix.toml").write_text(MINIMAL.split("[axes]")[0] + """
[axes]
target = ["android-arm64-int8", "android-arm64-w4"]
percentile = [99.9, 99.99]
fallback = ["none", "auto"]
max_float_layers = [1, 2]
equalize = ["auto", "off"]
""")
    names = [c.name for c in load_matrix(tmp_path / "matrix.toml").cells]
    assert names == ["android-arm64-int8-none-auto", "android-arm64-int8-none-off", "android-arm64-int8-auto-1-auto",
                     "android-arm64-int8-auto-1-off", "android-arm64-int8-auto-2-auto", "android-arm64-int8-auto-2-off",
                     "android-arm64-w4-none", "android-arm64-w4-auto-1", "android-arm64-w4-auto-2"]


@pytest.mark.slow
def test_resume_rebuilds_only_the_missing_or_changed_cells(digits_files, tmp_path: Path):
    import shutil

    matrix = _digits_matrix(digits_files, tmp_path, 'target = "android-arm64-int16x8"\nconverter = "onnx2tf"\n'
                            'emulator = "host"\nseed = [0, 1]', with_eval=True)
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
    # the rebuilt cell took its export, float conversion, activation ranges and reference outputs from the step
    # cache that the first run left in OUT/.steps (the other cell's, of the same model), and measured the same drift
    everything = ["calibration", "conversion", "export", "reference"]
    assert again.cells[0]["reused_steps"] == everything
    assert again.cells[0]["drift"] == first.cells[0]["drift"] and again.cells[0]["peak_rss_mb"] > 0
    report = json.loads((tmp_path / "out" / again.cells[0]["bundle"] / "report.json").read_text())
    assert report["conversion"]["reused"] is True and report["size"] == json.loads(
        (tmp_path / "out" / again.cells[1]["bundle"] / "report.json").read_text())["size"]
    assert report["resources"]["reused_steps"] == everything
    # its manifest names each entry it took and the sha256 of every file in it, as the cache verified them
    manifest = json.loads((tmp_path / "out" / again.cells[0]["bundle"] / "manifest.json").read_text())
    assert sorted({entry["step"] for entry in manifest["step_cache"]}) == ["export", "onnx2tf", "ranges",
                                                                          "reference"]
    for entry in manifest["step_cache"]:
        folder = tmp_path / "out" / ".steps" / entry["step"] / entry["key"]
        assert entry["files"] == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()
                                  if f.name != "entry.json"}
    assert any(line.startswith("step cache (") and line.endswith(
        "of 1 built cells, 1 reused the export, 1 reused the conversion, 1 reused the calibration, 1 reused the "
        "reference") for line in lines), lines
    assert again.cells[1]["drift"] == first.cells[1]["drift"] and again.cells[1]["size"] == first.cells[1]["size"]
    matrix.write_text(matrix.read_text().replace('eval = "', 'max_drop = 2.0\neval = "'))  # a changed input
    changed = edgekit.matrix(matrix, tmp_path / "out", jobs=2, resume=True)
    assert [c["resumed"] for c in changed.cells] == [False, False]


@pytest.mark.slow
def test_sigint_stops_the_running_cell_and_starts_no_other(digits_files, tmp_path: Path):
    """Ctrl-C while the first of three cells converts: exit 130, no cell after it starts, no staging or work
    folder anywhere, no build process left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.pipeline.test_faults import children, wait_gone

    matrix = _digits_matrix(digits_files, tmp_path,
                            'target = "android-arm64-int8"\nemulator = "host"\nseed = [0, 1, 2]')
    (tmp_path / "tmp").mkdir()
    # as from a terminal: a suite started in the background by a non-interactive shell passes SIGINT on ignored
    run = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "matrix", str(matrix), "--out", str(tmp_path / "out"),
                            "--jobs", "1"], stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "out" / "digits" / "android-arm64-int8-host-0.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "converting" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    builds = children(run.pid)
    assert builds  # the first cell's build runs
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130 and "Traceback" not in stderr, stderr
    assert wait_gone(builds) == []
    assert sorted(p.name for p in (tmp_path / "out" / "digits").iterdir()) == ["android-arm64-int8-host-0.log"]
    assert list((tmp_path / "tmp").iterdir()) == [] and not (tmp_path / "out" / "matrix.json").exists()


@pytest.mark.slow
def test_ray_builds_the_same_cells_as_the_local_pool(minimal_local, tmp_path: Path, monkeypatch):
    """--ray (a local Ray runtime started here): every cell a Ray task, its files through the object store, its
    bundle sent back; the drift and size of every cell equal the local pool's."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'edgekit[ray]'")
    local = json.loads((minimal_local[0] / "out" / "matrix.json").read_text())
    monkeypatch.chdir(ROOT)
    (tmp_path / "matrix.toml").write_text(MINIMAL)
    result = CliRunner().invoke(main, ["matrix", str(tmp_path / "matrix.toml"), "--out", str(tmp_path / "out"),
                                       "--ray", "--baseline", str(minimal_local[0] / "out")])
    assert result.exit_code == 0, result.output
    assert "as Ray tasks on a local Ray runtime" in result.output
    assert "release gate against" in result.output and "0 of 3 compared cells regressed" in result.output
    on_ray = json.loads((tmp_path / "out" / "matrix.json").read_text())
    assert [c["name"] for c in on_ray["cells"]] == [c["name"] for c in local["cells"]]
    for ours, theirs in zip(on_ray["cells"], local["cells"]):
        assert ours["exit_code"] == 0 and ours["drift"] == theirs["drift"] and ours["size"] == theirs["size"]
        report = json.loads((tmp_path / "out" / ours["bundle"] / "report.json").read_text())
        assert report["size"]["device_bytes"] == ours["size"]["device_bytes"]
        assert (tmp_path / "out" / ours["bundle"] / "model.tflite").is_file()
    assert not list((tmp_path / "out" / "digits").glob(".*"))  # no staging folder left


@pytest.mark.slow
def test_ray_missing_is_refused_before_any_build(tmp_path: Path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    (tmp_path / "matrix.toml").write_text(MINIMAL)
    result = CliRunner().invoke(main, ["matrix", str(tmp_path / "matrix.toml"), "--out", str(tmp_path / "out"),
                                       "--ray"])
    assert result.exit_code == 2 and "needs Ray, which is not installed" in result.output
    assert "pip install 'edgekit[ray]'" in result.output and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_bundle_from_ray_is_unpacked_only_into_its_own_folder(tmp_path: Path):
    """matrix_ray.unpack_bundle: a path out of the folder is refused and the existing bundle stays as it was."""
    import io
    import tarfile

    from edgekit.build_matrix.ray import unpack_bundle

    def archive(name: str, data: bytes) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    bundle = tmp_path / "out" / "digits" / "cell"
    unpack_bundle(archive("./report.json", b"{}"), bundle)
    assert (bundle / "report.json").read_bytes() == b"{}"
    with pytest.raises(tarfile.TarError):
        unpack_bundle(archive("../../escaped.json", b"x"), bundle)
    assert not (tmp_path / "out" / "escaped.json").exists() and not (tmp_path / "escaped.json").exists()
    assert (bundle / "report.json").read_bytes() == b"{}"
    assert [p.name for p in bundle.parent.iterdir()] == ["cell"]
    unpack_bundle(archive("./report.json", b'{"new": 1}'), bundle)
    assert (bundle / "report.json").read_bytes() == b'{"new": 1}'
    assert [p.name for p in bundle.parent.iterdir()] == ["cell"]  # no staging folder left


@pytest.mark.slow
def test_the_release_gate_fails_a_cell_that_regressed_against_the_baseline(minimal_local, tmp_path: Path,
                                                                             monkeypatch):
    """--baseline OUT_OF_A_PREVIOUS_RUN: `edgekit diff` on every cell built in both; a regression exits 3."""
    monkeypatch.chdir(ROOT)
    baseline = minimal_local[0] / "out"
    same = MINIMAL.replace('target = ["android-arm64-int8", "android-arm64-fp16"]', 'target = "android-arm64-fp16"')
    (tmp_path / "same.toml").write_text(same)
    lines: list[str] = []
    result = edgekit.matrix(tmp_path / "same.toml", tmp_path / "same", baseline=baseline, progress=lines.append)
    assert result.exit_code == 0 and result.cells[0]["baseline"] == {"passed": True, "regressions": []}
    # the same cell, now held to 200 dB: it fails its own gate, where the baseline's passed
    worse = same.replace("max_drop = 1.0", 'max_drop = 1.0\ntask = "regress"\nmin_sqnr = 200.0')
    (tmp_path / "worse.toml").write_text(worse)
    result = edgekit.matrix(tmp_path / "worse.toml", tmp_path / "worse", baseline=baseline, progress=lines.append)
    written = json.loads((tmp_path / "worse" / "matrix.json").read_text())
    assert result.exit_code == 3 and written["baseline"]["regressed"] == ["digits/android-arm64-fp16"]
    assert "NEW fails its own drift thresholds" in written["cells"][0]["baseline"]["regressions"][0]
    assert written["baseline"]["missing"] == [] and any("1 of 1 compared cells regressed" in line for line in lines)
    page = (tmp_path / "worse" / "matrix.html").read_text()  # the gate's verdict is on the page too
    assert "1 cell(s) regressed: digits/android-arm64-fp16" in page
    assert '<td class="fail">regressed: NEW fails its own drift thresholds' in page
    with pytest.raises(ConfigError, match=r"holds no matrix\.json"):
        edgekit.matrix(tmp_path / "same.toml", tmp_path / "x", baseline=tmp_path)
    # a damaged baseline bundle is named as such: no baseline to pass against (the cell is kept by --resume)
    damaged = Path(shutil.copytree(baseline, tmp_path / "damaged"))
    model = damaged / "digits" / "android-arm64-fp16" / "model.tflite"
    model.write_bytes(model.read_bytes()[:-8] + bytes(8))
    result = edgekit.matrix(tmp_path / "same.toml", tmp_path / "same", baseline=damaged, resume=True,
                            progress=lines.append)
    regressions = result.cells[0]["baseline"]["regressions"]
    assert result.exit_code == 3 and result.cells[0]["resumed"]
    assert regressions[0].startswith(f"the baseline bundle {damaged / 'digits' / 'android-arm64-fp16'} is damaged")
    assert "model.tflite differs from the sha256 in manifest.json" in regressions[0]


@pytest.mark.slow
@pytest.mark.parametrize("always", [False, True])
def test_a_cell_whose_ray_worker_dies_is_retried_once(always, tmp_path: Path, monkeypatch):
    """The model's factory kills the Ray worker that runs its build: Ray runs the cell once more. A worker that
    dies again loses only its cell (exit 1, with Ray's error); the other cell is built."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'edgekit[ray]'")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("EDGEKIT_TEST_KILL_MARKER", str(tmp_path / "killed"))
    if always:
        monkeypatch.setenv("EDGEKIT_TEST_KILL_ALWAYS", "1")
    data = ROOT / "examples" / "01_android_int8"
    (tmp_path / "m.toml").write_text(f"""
[[models]]
name = "killer"
model = "tests.helpers:digits_killing_its_ray_worker"
calibration = "{data / 'calibration.npz'}"
eval = "{data / 'eval.npz'}"

[[models]]
name = "digits"
model = "{data / 'digits_cnn.pt2'}"
calibration = "{data / 'calibration.npz'}"
eval = "{data / 'eval.npz'}"

[axes]
target = "android-arm64-fp32"
emulator = "host"
""")
    result = edgekit.matrix(tmp_path / "m.toml", tmp_path / "out", ray="local")
    killer, digits = result.cells
    assert (tmp_path / "killed").read_text().count("killed") == (2 if always else 1)
    assert digits["exit_code"] == 0 and digits["passed"]
    if always:
        assert killer["exit_code"] == 1 and killer["bundle"] is None and result.exit_code == 1
        assert killer["error"].startswith("error: the Ray worker building this cell failed")
    else:
        assert killer["exit_code"] == 0 and killer["passed"] and result.exit_code == 0
        assert (tmp_path / "out" / "killer" / "android-arm64-fp32-host" / "report.json").is_file()


def test_the_default_pool_admits_cells_by_the_memory_their_model_measured():
    """Before a model's first cell finishes, each of its cells is expected to take CELL_MEMORY_MB, so two do not
    start together on a machine with room for one; once a cell measured its peak, as many start as fit."""
    from edgekit.build_matrix.pool import CELL_MEMORY_MB, MARGIN, Budget

    budget = Budget(jobs=4, memory_mb=CELL_MEMORY_MB + 2000)
    never = lambda: False  # noqa: E731
    assert budget.admit(0, "big", never) and not budget.fits("big")  # 4096 + 4096 MB would not fit
    budget.done(0, "big", 500)  # its first cell peaked at 500 MB
    assert budget.expected_mb("big") == int(500 * MARGIN)
    for key in (1, 2, 3, 4):
        assert budget.admit(key, "big", never)
    assert not budget.fits("big") and budget.most_at_once == 4  # --jobs (the cores) still bounds it
    assert budget.running and not budget.fits("other")  # an unmeasured model waits for room
    fixed = Budget(jobs=2, memory_mb=1, fixed=True)  # --jobs N: N at once, whatever the memory
    assert fixed.admit(0, "big", never) and fixed.admit(1, "big", never) and not fixed.fits("big")


def test_the_live_table_shows_each_cell_state_time_drop_and_size():
    from rich.console import Console

    from edgekit.build_matrix.board import Board
    from edgekit.build_matrix.file import Cell

    cells = load_matrix_cells()
    board = Board()
    for cell in cells:
        board.watch("queued", cell)
    board.watch("running", cells[0])
    board.watch("done", cells[1], {"exit_code": 3, "resumed": False, "seconds": 12.3, "drift": {"accuracy_drop": 1.5},
                                   "size": {"device_bytes": 47968}})
    console = Console(record=True, width=140)
    console.print(board.table())
    text = console.export_text()
    rows = [line for line in text.splitlines() if "digits/" in line]
    assert len(rows) == len(cells) == 3 and isinstance(cells[0], Cell)  # fp16 has no calibration method
    assert "building" in rows[0] and "drift over threshold (exit 3)" in rows[1] and "1.50" in rows[1]
    assert "47,968 B" in rows[1] and "12 s" in rows[1] and "queued" in rows[2]


def load_matrix_cells() -> list:
    import tempfile

    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        (Path(folder) / "matrix.toml").write_text(MINIMAL)
        return load_matrix(Path(folder) / "matrix.toml").cells
