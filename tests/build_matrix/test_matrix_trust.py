"""A build matrix among files it should not trust: cells isolated from the working directory, --resume keeping only
bundles that verify, OUT locked for one matrix at a time, its outputs written whole or not at all, and Ray nodes
that use only the files the driver sent."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgekit
from edgekit.build_matrix.file import load_matrix
from edgekit.build_matrix.ray import UnsafeNodeFile, _local_copy, node_folder
from edgekit.build_matrix.run import _other_inputs, _resumed, inputs_hash
from edgekit.cli import main
from edgekit.utils import outdir

ROOT = Path(__file__).resolve().parents[2]


def _matrix(digits_files, folder: Path, axes: str) -> Path:
    lines = ["[[models]]", 'name = "digits"', f'model = "{digits_files["pt2"]}"',
             f'calibration = "{digits_files["calib"]}"', f'eval = "{digits_files["eval"]}"', "", "[axes]", axes, ""]
    path = folder / "m.toml"
    path.write_text("\n".join(lines))
    return path


@pytest.mark.slow
def test_cells_ignore_the_working_directory_and_resume_keeps_only_bundles_that_verify(digits_files, tmp_path: Path,
                                                                                     monkeypatch):
    work, marker = tmp_path / "work", tmp_path / "ran"
    work.mkdir()
    for name in ("click.py", "numpy.py"):  # a stray file where the matrix is started
        (work / name).write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    monkeypatch.chdir(work)
    matrix = _matrix(digits_files, tmp_path, 'target = "android-arm64-fp32"\nemulator = "host"\nseed = [0, 1]')
    out = tmp_path / "out"
    first = edgekit.matrix(matrix, out, jobs=2)
    assert not marker.exists(), f"a module from the working directory ran in a cell: {marker.read_text()}"
    assert first.exit_code == 0, first.cells
    tampered, reported = (out / cell["bundle"] for cell in first.cells)
    # every cell's manifest names the driver's model and data by sha256, and the driver compares them
    sent = {str(digits_files[k]): hashlib.sha256(Path(digits_files[k]).read_bytes()).hexdigest()
            for k in ("pt2", "calib", "eval")}
    manifest = json.loads((tampered / "manifest.json").read_text())
    assert manifest["model"]["sha256"] == sent[str(digits_files["pt2"])]
    assert manifest["data"]["calibration"]["file_sha256"] == sent[str(digits_files["calib"])]
    assert manifest["data"]["eval"]["file_sha256"] == sent[str(digits_files["eval"])]
    cell = load_matrix(matrix).cells[0]
    assert _other_inputs(cell, tampered, sent) is None
    assert "the bundle's model has sha256" in _other_inputs(cell, tampered, {**sent, cell.model.model: "0" * 64})
    model = tampered / "model.tflite"
    model.write_bytes(model.read_bytes()[:-64] + bytes(64))  # the kept bundle's model changed after the build
    (reported / "report.json").write_text("{")  # a corrupt report: rebuilt, not a traceback
    damaged = sorted(p for p in (out / ".steps").glob("*/*/*") if p.name != "entry.json")
    assert {p.parent.parent.name for p in damaged} >= {"export", "reference"}
    for path in damaged:  # the step cache the cells share, every entry's payload changed on disk
        path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 0xFF]))
    lines: list[str] = []
    again = edgekit.matrix(matrix, out, jobs=2, resume=True, progress=lines.append)
    assert again.exit_code == 0 and [c["resumed"] for c in again.cells] == [False, False]
    assert any(line.startswith(f"--resume: {first.cells[0]['bundle']} is rebuilt: ") and
               "model.tflite differs from the sha256 in manifest.json" in line for line in lines), lines
    assert any(line.startswith(f"--resume: {first.cells[1]['bundle']} is rebuilt: ") and
               "report.json differs from the sha256" in line for line in lines), lines
    logs = "".join((out / "digits" / f"{c['name']}.log").read_text() for c in again.cells)
    assert "step cache entry export/" in logs and "step cache entry reference/" in logs and "is damaged" in logs
    for old, new in zip(first.cells, again.cells):  # computed again from the model, the same measurement
        assert new["drift"] == old["drift"] and new["size"] == old["size"]
    stamp = out / "digits" / f"{first.cells[1]['name']}.inputs-sha256"
    stamp.write_bytes(b"\xff\xfe\x00 not a digest")  # a stamp that is not text: rebuilt, never a traceback
    cell = next(c for c in load_matrix(matrix).cells if c.name == first.cells[1]["name"])
    assert _resumed(cell, out, inputs_hash(cell, out), lines.append) is None
    stamp.write_text(inputs_hash(cell, out))
    # the outputs are written whole or not at all: a file size limit (as a full disk) leaves the last ones intact
    before = {name: (out / name).read_bytes() for name in ("matrix.json", "matrix.html")}
    limited = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500)); "
               "from edgekit.cli import main; sys.argv[0] = 'edgekit'; main()")
    done = subprocess.run([sys.executable, "-P", "-c", limited, "matrix", str(matrix), "--out", str(out), "--resume"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2 and "error: writing matrix.json, matrix.html: File too large" in done.stderr, \
        done.stderr
    assert "Traceback" not in done.stderr
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_one_matrix_at_a_time_on_an_out_and_out_must_be_a_folder(digits_files, tmp_path: Path):
    matrix = _matrix(digits_files, tmp_path, 'target = "android-arm64-fp32"')
    out = tmp_path / "out"
    out.mkdir()
    with outdir.out_lock(out, "matrix"):
        held = CliRunner().invoke(main, ["matrix", str(matrix), "--out", str(out)])
    assert held.exit_code == 2 and f"another edgekit matrix (process {os.getpid()}) is writing {out}" in held.output
    assert list(out.iterdir()) == []
    (tmp_path / "file").write_text("not a folder")
    refused = CliRunner().invoke(main, ["matrix", str(matrix), "--out", str(tmp_path / "file")])
    assert refused.exit_code == 2 and f"--out {tmp_path / 'file'} is a file, not a folder" in refused.output
    assert "Traceback" not in refused.output


def test_a_ray_node_folder_is_private_and_its_files_are_hashed(tmp_path: Path):
    root = node_folder(tmp_path)
    assert root.name == f"edgekit-ray-{os.getuid()}" and (root.stat().st_mode & 0o777) == 0o700
    data = b"the driver's model"
    digest = hashlib.sha256(data).hexdigest()
    assert _local_copy(root, digest, "net.pt2", lambda: data).read_bytes() == data
    (root / digest / "net.pt2").write_bytes(b"planted")  # changed on the node after it was written
    with pytest.raises(UnsafeNodeFile, match="is not the file the driver sent"):
        _local_copy(root, digest, "net.pt2", lambda: data)
    with pytest.raises(UnsafeNodeFile, match="arrived with a sha256 other than the driver's"):
        _local_copy(root, "0" * 64, "net.pt2", lambda: data)
    root.chmod(0o777)  # as another user's folder would be to us: writable by others
    with pytest.raises(UnsafeNodeFile, match="is writable by others"):
        node_folder(tmp_path)
    shutil.rmtree(root)
    root.symlink_to(tmp_path)
    with pytest.raises(UnsafeNodeFile, match="is not a folder"):
        node_folder(tmp_path)


@pytest.mark.slow
def test_a_file_planted_on_a_ray_node_fails_its_cell(digits_files, tmp_path: Path, monkeypatch, request):
    """A local Ray runtime whose workers' temp folder holds, at the place of the cell's model, another model (as a
    local user could plant it): the cell fails with the reason, it does not pass with the planted model."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'edgekit[ray]'")
    node_tmp = Path(tempfile.mkdtemp(prefix="ek-", dir="/tmp"))  # short: Ray's sockets live under it too
    request.addfinalizer(lambda: shutil.rmtree(node_tmp, ignore_errors=True))
    monkeypatch.setenv("TMPDIR", str(node_tmp))  # the Ray workers started here take it as their temp folder
    digest = hashlib.sha256(Path(digits_files["pt2"]).read_bytes()).hexdigest()
    other = ROOT / "examples" / "01_android_int8" / "digits_cnn.pt2"  # a working model, not the cell's
    assert hashlib.sha256(other.read_bytes()).hexdigest() != digest
    for folder in (f"edgekit-ray-{os.getuid()}", "edgekit-ray"):  # where this version and the last one look
        planted = node_tmp / folder / digest / Path(digits_files["pt2"]).name
        planted.parent.mkdir(parents=True)
        shutil.copyfile(other, planted)
        (node_tmp / folder).chmod(0o700)
    matrix = _matrix(digits_files, tmp_path, 'target = "android-arm64-fp32"\nemulator = "host"')
    result = CliRunner().invoke(main, ["matrix", str(matrix), "--out", str(tmp_path / "out"), "--ray", "--json"])
    assert result.exit_code == 2, result.output
    written = json.loads((tmp_path / "out" / "matrix.json").read_text())
    assert written["cells"][0]["bundle"] is None
    assert "is not the file the driver sent (sha256 differs): refused" in written["cells"][0]["error"]


def _load_in_child(matrix: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """load_matrix in its own process, so a file that expands without bound fails the test instead of hanging it."""
    code = ("import sys; from edgekit.build_matrix.file import load_matrix; from edgekit.errors import ConfigError\n"
            "try:\n    print(len(load_matrix(sys.argv[1]).cells))\n"
            "except ConfigError as exc:\n    print('error:', exc.message); sys.exit(2)")
    return subprocess.run([sys.executable, "-c", code, str(matrix)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_a_matrix_file_is_bounded_before_it_is_expanded(digits_files, tmp_path: Path):
    many = ", ".join(map(str, range(1000)))
    huge = _matrix(digits_files, tmp_path, f'target = "android-arm64-fp32"\nseed = [{many}]\nrecover = [{many}]\n'
                                           f"max_size = [{many}]")
    assert huge.stat().st_size < 16_000
    done = _load_in_child(huge)
    assert done.returncode == 2 and "the axes multiply to 1,000,000,000 combinations for 1 model(s)" in done.stdout
    # 100,000 combinations that do not apply to a float target collapse into one cell, read in seconds
    values = ", ".join(str(90 + k / 10) for k in range(100))
    collapsing = _matrix(digits_files, tmp_path, f'target = "android-arm64-fp32"\ncalibration_method = '
                                                 f'"percentile"\npercentile = [{values}]\nmax_size = [{many}]')
    done = _load_in_child(collapsing)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stdout + done.stderr
    three = _matrix(digits_files, tmp_path, 'target = "android-arm64-fp32"\nseed = [0, 1, 2]')
    refused = CliRunner().invoke(main, ["matrix", str(three), "--out", str(tmp_path / "out"), "--max-cells", "2"])
    assert refused.exit_code == 2 and "3 cells, more than --max-cells 2" in refused.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("axes", "message"), [
    ('target = "android-arm64-fp32"\nseed = ["abc"]', "cell digits/android-arm64-fp32-abc: seed = 'abc' is not an "
                                                      "integer"),
    ('target = "android-arm64-int8"\nfallback = "auto"\nmax_float_layers = [-1]',
     "max_float_layers = -1 is negative"),
    ('target = "android-arm64-int8"\nprune = [0.5, 2.0]', "prune = 2.0 is outside [0, 1]"),
    ('target = "android-arm64-int8"\nqat = [0, 1.5]', "qat = 1.5 is not a number of steps"),
    ('target = "android-arm64-int8"\nqat = ["auto", "many"]', "qat = 'many' is neither a number of steps nor 'auto'"),
])
def test_every_cell_value_is_checked_before_out_is_touched(axes: str, message: str, digits_files, tmp_path: Path):
    matrix = _matrix(digits_files, tmp_path, axes)
    refused = CliRunner().invoke(main, ["matrix", str(matrix), "--out", str(tmp_path / "out")])
    assert refused.exit_code == 2 and message in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "out").exists()


def test_a_model_named_like_a_matrix_output_is_refused(digits_files, tmp_path: Path):
    matrix = _matrix(digits_files, tmp_path, 'target = "android-arm64-fp32"')
    matrix.write_text(matrix.read_text().replace('name = "digits"', 'name = "matrix.json"'))
    refused = CliRunner().invoke(main, ["matrix", str(matrix), "--out", str(tmp_path / "out")])
    assert refused.exit_code == 2 and "is the name of a file the matrix writes in OUT" in refused.output


@pytest.mark.parametrize("seed", range(4))
def test_fuzzed_matrix_files_are_a_matrix_or_one_config_error(seed: int, digits_files, tmp_path: Path):
    """Mutations and truncations of a valid file: load_matrix returns a matrix or raises ConfigError (exit 2 with
    one message), never another exception."""
    from edgekit.build_matrix.file import load_matrix
    from edgekit.errors import ConfigError

    base = _matrix(digits_files, tmp_path, 'target = ["android-arm64-int8", "android-arm64-fp16"]\n'
                                           'calibration_method = ["minmax", "percentile"]\nseed = [0, 1]\n'
                                           '[[exclude]]\ntarget = "android-arm64-fp16"\nseed = 1\n').read_bytes()
    rng = np.random.default_rng(seed)
    kinds = {"matrix": 0, "error": 0}
    for _ in range(60):
        data = bytearray(base)
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[at] = int(rng.choice(list(b'[]{}"=,.\n#0123456789-axyz\xff')))
        if rng.random() < 0.25:
            data = data[:int(rng.integers(0, len(data)))]
        (tmp_path / "f.toml").write_bytes(bytes(data))
        try:
            load_matrix(tmp_path / "f.toml")
            kinds["matrix"] += 1
        except ConfigError:
            kinds["error"] += 1
    assert kinds["error"] > 0


def test_a_data_folder_changing_while_the_matrix_reads_it_is_one_error(digits_files, tmp_path: Path):
    """An image folder whose files are deleted while the matrix hashes it: one ConfigError naming it (exit 2),
    never a traceback."""
    import threading

    from edgekit.build_matrix.run import inputs_hash
    from edgekit.errors import ConfigError

    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3000):
        (folder / f"{k}.png").write_bytes(b"x" * 64)
    matrix = _matrix(digits_files, tmp_path, 'target = "android-arm64-fp32"')
    cell = load_matrix(matrix).cells[0]
    cell = type(cell)(type(cell.model)(cell.model.name, cell.model.model, str(folder), None, {}), cell.axes)
    stop = threading.Event()

    def churn() -> None:  # files removed and written again, over and over, as a sync job would
        while not stop.is_set():
            for k in range(3000):
                (folder / f"{k}.png").unlink(missing_ok=True)
            for k in range(3000):
                (folder / f"{k}.png").write_bytes(b"x" * 64)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        with pytest.raises(ConfigError, match=r"images/\d+\.png|changed while the matrix read it"):
            for _ in range(20):
                inputs_hash(cell, tmp_path / "out")
    finally:
        stop.set()
        worker.join()
