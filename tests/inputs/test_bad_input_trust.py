"""Bad input that used to end in exit 1 with a traceback: each is now exit 2 with one message and a hint, before
anything is written. And ONNX external data that leads out of the model's folder is refused, not read."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.pipeline.test_faults import assert_one_message, cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "01_android_int8"
MODEL, CALIB = EXAMPLE / "digits_cnn.pt2", EXAMPLE / "calibration.npz"
BUILD = ["--target", "android-arm64-fp32", "--emulator", "host"]
RECIPE = "mean = [0.0]\nstd = [1.0]\nlayout = 'NCHW'\ncolour = 'grey'\nscale = 255.0\n"


def _recipe(folder: Path, text: bytes) -> list[str]:
    (folder / "r.toml").write_bytes(text)
    return ["--calibration", str(ROOT / "calibration" / "samples" / "digits"), "--recipe", str(folder / "r.toml")]


def _huge_header(folder: Path) -> list[str]:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1 << 30, 1, 8, 8)})
    with zipfile.ZipFile(folder / "huge.npz", "w") as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(256))
    return ["--calibration", str(folder / "huge.npz")]


def _int64(folder: Path) -> list[str]:
    with np.load(CALIB) as data:
        np.savez(folder / "int.npz", x=(data["x"] * 16).astype(np.int64))
    return ["--calibration", str(folder / "int.npz")]


def _image_bomb(folder: Path) -> list[str]:
    from PIL import Image

    (folder / "images" / "0").mkdir(parents=True)
    Image.new("L", (14000, 14000)).save(folder / "images" / "0" / "big.png")  # 196 M pixels, a few kB of PNG
    (folder / "r.toml").write_text("size = [8, 8]\n" + RECIPE)
    return ["--calibration", str(folder / "images"), "--recipe", str(folder / "r.toml")]


def _new_onnx(folder: Path) -> list[str]:
    import onnx
    from onnx import TensorProto, helper

    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 8, 8]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", value[:1], value[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 12  # newer than onnxruntime 1.23 reads
    onnx.save(model, folder / "new.onnx")
    return ["MODEL", str(folder / "new.onnx"), "--calibration", str(CALIB)]


CASES = {
    "non-UTF-8 target file": (lambda f: (f / "t.toml").write_bytes(b'name = "\xff"\n') and
                              ["--target", str(f / "t.toml"), "--calibration", str(CALIB)], "cannot read target"),
    "non-UTF-8 recipe": (lambda f: _recipe(f, b'size = "\xff"\n'), "cannot read recipe"),
    "recipe size [0, 0]": (lambda f: _recipe(f, b"size = [0, 0]\n" + RECIPE.encode()), "recipe size = [0, 0]"),
    "recipe size '8x8'": (lambda f: _recipe(f, b'size = "8x8"\n' + RECIPE.encode()), "recipe size = '8x8'"),
    "recipe size [8]": (lambda f: _recipe(f, b"size = [8]\n" + RECIPE.encode()), "recipe size = [8]"),
    "image over the bomb limit": (_image_bomb, "could be decompression bomb"),
    "npz header declaring a huge shape": (_huge_header, "declares (1073741824, 1, 8, 8) float32"),
    "int64 data for a float model": (_int64, "input 'x' is float32 in the model, the data is int64"),
    "ONNX newer than the runtime": (_new_onnx, "cannot read this model (IR version 12"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_exit_2_with_one_message(case: str, tmp_path: Path):
    make, message = CASES[case]
    args = make(tmp_path)
    model = args[1] if args[0] == "MODEL" else MODEL
    args = args[2:] if args[0] == "MODEL" else args
    target = [] if "--target" in args else BUILD
    assert_one_message(cli("build", model, *target, *args, "--out", tmp_path / "out"), 2, message)
    assert not (tmp_path / "out").exists()


def test_a_non_utf8_matrix_file_is_exit_2(tmp_path: Path):
    (tmp_path / "m.toml").write_bytes(b'[[models]]\nname = "\xff\xfe"\n')
    assert_one_message(cli("matrix", tmp_path / "m.toml", "--out", tmp_path / "out"), 2, "m.toml")
    assert not (tmp_path / "out").exists()


@pytest.fixture()
def bundle(int8_bundle, tmp_path: Path) -> Path:
    return Path(shutil.copytree(int8_bundle.out, tmp_path / "bundle"))


@pytest.mark.parametrize("name", ["report.json", "manifest.json"])
def test_deeply_nested_json_in_a_bundle_is_exit_2(name: str, bundle: Path, int8_bundle):
    deep = "[" * 100_000 + "]" * 100_000
    if name == "report.json":
        (bundle / name).write_text('{"schema": "edgekit.report/1", "drift": ' + deep + "}")
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    else:
        (bundle / name).write_text('{"files": ' + deep + "}")
    for args in (["check", bundle], ["diff", int8_bundle.out, bundle]):
        assert_one_message(cli(*args), 2, f"{name} nests deeper than any")
    if name == "manifest.json":
        import subprocess
        import sys

        done = subprocess.run([sys.executable, bundle / "check.py"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "manifest.json nests deeper than any manifest" in done.stderr
        assert "Traceback" not in done.stderr


def test_onnx_external_data_never_leads_out_of_the_model_folder(digits, tmp_path: Path):
    """A model whose external data file is a link to a file elsewhere (here: a copy of the real weights, so only
    the link is wrong) is refused before its bytes are read; the same model with the file beside it builds."""
    import onnx
    import torch

    model, data = digits
    folder, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    torch.onnx.export(model, (torch.from_numpy(data["x_calib"][:1]),), str(tmp_path / "plain.onnx"), dynamo=True)
    proto = onnx.load(str(tmp_path / "plain.onnx"))
    onnx.save_model(proto, str(folder / "net.onnx"), save_as_external_data=True, location="net.weights",
                    size_threshold=0)
    shutil.move(folder / "net.weights", elsewhere / "net.weights")
    os.symlink(elsewhere / "net.weights", folder / "net.weights")
    np.savez(tmp_path / "calib.npz", x=data["x_calib"])
    args = ["build", folder / "net.onnx", *BUILD, "--calibration", tmp_path / "calib.npz"]
    assert_one_message(cli(*args, "--out", tmp_path / "out"), 2,
                       "external data 'net.weights' resolves outside the model's folder")
    assert not (tmp_path / "out").exists()
    (folder / "net.weights").unlink()
    shutil.copyfile(elsewhere / "net.weights", folder / "net.weights")
    built = cli(*args, "--out", tmp_path / "out")
    assert built.exit_code == 0, built.output
