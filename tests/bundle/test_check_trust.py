"""check.py on a device, and `edgekit check`, against a bundle someone changed after the build: nothing is imported
from the bundle's folder, every hash is compared before any file is parsed, unlisted files are refused, and an npz
header cannot make anything allocate more than its member holds."""

from __future__ import annotations

import ast
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.pipeline.test_faults import assert_one_message, cli, rehash

PLANTED = ("numpy.py", "json.py", "__future__.py", "hashlib.py")


@pytest.fixture()
def bundle(int8_bundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(int8_bundle.out, tmp_path / "bundle"))


def run_check(bundle: Path, *args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """`python check.py` as a device runs it, and the peak RSS (MB) of that process alone."""
    probe = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stdout.write(done.stdout); sys.stderr.write(done.stderr); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
             "sys.exit(done.returncode)")
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, str(bundle / "check.py"), *args],
                          cwd=cwd or bundle, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    peak = int(lines[-1]) // 1024
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, "\n".join(lines[:-1])), peak


@pytest.mark.parametrize("where", ["bundle", "elsewhere"])
def test_check_py_imports_nothing_from_its_bundle_folder(bundle: Path, int8_bundle, tmp_path: Path, where: str):
    marker = tmp_path / "ran"
    for name in PLANTED:
        (bundle / name).write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    done, _ = run_check(bundle, "--expect-digest", int8_bundle.manifest_sha256,
                        cwd=bundle if where == "bundle" else tmp_path)
    assert not marker.exists(), f"a planted module ran: {marker.read_text()}"
    assert done.returncode == 3 and "not listed in manifest.json" in done.stderr and done.stdout == ""
    assert_one_message(cli("check", bundle), 3, "not listed in manifest.json")
    for name in PLANTED:
        (bundle / name).unlink()
    done, _ = run_check(bundle, "--expect-digest", int8_bundle.manifest_sha256, cwd=tmp_path)
    assert done.returncode == 0 and "PASSED" in done.stdout


def test_an_unlisted_file_is_refused_even_in_a_subfolder(bundle: Path):
    (bundle / "golden" / "extra.npz").write_bytes(b"")
    done, _ = run_check(bundle)
    assert done.returncode == 3 and "golden/extra.npz: not listed in manifest.json" in done.stderr


def _npy(shape: tuple[int, ...], data: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def _bomb(path: Path) -> None:
    """A ~0.5 MB npz whose one member declares and holds 512 MB of zeros (deflate)."""
    count = 128 * 1024 * 1024
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("x.npy", "w", force_zip64=True) \
            as member:
        member.write(_npy((count,), b""))
        block = bytes(64 << 20)
        for _ in range(count * 4 // len(block)):
            member.write(block)


def test_a_tampered_header_is_exit_3_before_it_is_parsed(bundle: Path, int8_bundle):
    _bomb(bundle / "golden" / "inputs.npz")
    assert (bundle / "golden" / "inputs.npz").stat().st_size < 1 << 20
    done, peak = run_check(bundle, "--expect-digest", int8_bundle.manifest_sha256)
    assert done.returncode == 3 and "golden/inputs.npz differs from the sha256" in done.stderr
    assert peak < 400, f"check.py peaked at {peak} MB"
    assert_one_message(cli("check", bundle), 3, "golden/inputs.npz differs from the sha256")
    rehash(bundle, "golden/inputs.npz")  # a forged manifest vouches for it: the header bound refuses it, unread
    done, peak = run_check(bundle)
    assert done.returncode == 2 and "expands" in done.stderr and "refused before reading" in done.stderr
    assert peak < 400, f"check.py peaked at {peak} MB"


def test_a_header_that_declares_more_than_its_member_holds_is_refused(bundle: Path):
    with zipfile.ZipFile(bundle / "golden" / "inputs.npz", "w") as archive:
        archive.writestr("x.npy", _npy((1 << 28, 1, 8, 8), bytes(1024)))
    rehash(bundle, "golden/inputs.npz")
    done, peak = run_check(bundle)
    assert done.returncode == 2 and "declares (268435456, 1, 8, 8) float32" in done.stderr
    assert peak < 400


def test_a_damaged_model_header_is_exit_3_when_the_hash_differs(bundle: Path, int8_bundle):
    data = (bundle / "model.tflite").read_bytes()
    (bundle / "model.tflite").write_bytes(b"\0" * 8 + data[8:])
    done, _ = run_check(bundle, "--expect-digest", int8_bundle.manifest_sha256)
    assert done.returncode == 3 and "model.tflite differs from the sha256" in done.stderr
    assert_one_message(cli("check", bundle, "--expect-digest", int8_bundle.manifest_sha256), 3,
                       "model.tflite differs from the sha256")


def _evaluated_annotations(source: str) -> list[str]:
    """Annotations Python evaluates when the module is run (function signatures, module and class level) that
    Python 3.8 cannot evaluate: `X | Y` or a subscripted builtin."""
    bad = []
    tree = ast.parse(source)
    nodes = [a.annotation for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
             for a in [*f.args.args, *f.args.kwonlyargs, *f.args.posonlyargs] if a.annotation is not None]
    nodes += [f.returns for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.returns is not None]
    nodes += [n.annotation for n in [*tree.body, *(b for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                                                   for b in c.body)] if isinstance(n, ast.AnnAssign)]
    for node in nodes:
        for inner in ast.walk(node):
            if (isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.BitOr)) or (
                    isinstance(inner, ast.Subscript) and isinstance(inner.value, ast.Name)
                    and inner.value.id in ("dict", "list", "tuple", "set", "type")):
                bad.append(ast.unparse(node))
    return bad


def test_device_scripts_run_on_the_jetpack_5_python(int8_bundle, tmp_path: Path):
    """check.py, monitor.py and build_engine.py run on the device's Python (JetPack 5: 3.8): no
    `from __future__` (a module looked up on the path, as any import), no annotation 3.8 cannot evaluate."""
    from edgekit.config.target import load_target
    from edgekit.routes.tensorrt.engine_scripts import write_scripts

    scripts = write_scripts(load_target("jetson-xavier-int8"), "model.qdq.onnx", tmp_path)
    for path in (int8_bundle.out / "check.py", int8_bundle.out / "monitor.py", scripts["build_engine.py"]):
        source = Path(path).read_text()
        assert "from __future__" not in source, path
        assert _evaluated_annotations(source) == [], path
        ast.parse(source, feature_version=(3, 8))
