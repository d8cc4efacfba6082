"""Routes as plugins: every target names a route module, nothing outside it branches on the platform, and a new
target of an existing route is one TOML file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.config.target import list_targets, load_target
from edgekit.errors import ConfigError
from edgekit.routes import Route, get_route, route_names

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "01_android_int8"


def test_every_target_names_a_registered_route():
    assert route_names() == ["executorch", "litert", "onnxruntime", "openvino", "tensorrt"]
    for target in list_targets():
        route = get_route(target.route)
        assert isinstance(route, Route) and route.name == target.route and route.runtime == target.runtime


def test_an_unknown_route_is_refused_naming_the_known_ones(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"unknown route 'nope'.*"):
        get_route("nope")
    text = (ROOT / "targets" / "android-arm64-int8.toml").read_text().replace('route = "litert"', 'route = "nope"')
    (tmp_path / "t.toml").write_text(text)
    known = "executorch, litert, onnxruntime, openvino, tensorrt"
    with pytest.raises(ConfigError, match=f"route = 'nope' is not one of {known}"):
        load_target(tmp_path / "t.toml")


# a test of the platform, a route, a device format or a runtime by name
BRANCH = re.compile(r"(?<!sys\.)platform\s*[!=]=|is_android|\"android\" in|\"jetson\" in|\.route\s*[!=]=|"
                    r"\b(fmt|format)\s*[!=]=\s*\"|\"\.tflite\"\s*:|[!=]=\s*\"(litert|tensorrt|onnxruntime|openvino|executorch)\"")
# what runs alone, where edgekit cannot reach the routes: check.py in a bundle, the worker inside the emulator
STANDALONE = {"edgekit/standalone/check.py", "edgekit/standalone/monitor.py", "edgekit/emulator/worker.py"}


def test_no_platform_branches_outside_the_routes():
    """The route is chosen by the registry: no module outside routes/ tests the platform, a route or a format."""
    offenders = []
    for path in (ROOT / "edgekit").rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        if path.relative_to(ROOT / "edgekit").parts[0] == "routes" or relative in STANDALONE:
            continue
        if BRANCH.search(path.read_text()):
            offenders.append(relative)
    assert offenders == []
    assert BRANCH.search('if target.route != "litert":') and BRANCH.search('if fmt != "tflite":')


@pytest.mark.slow
def test_a_target_of_an_existing_route_is_one_toml_file(tmp_path: Path):
    """jetson-xavier-fp16 was added as targets/jetson-xavier-fp16.toml alone; it builds, with Xavier's engine
    scripts, and its FP16 drift passes."""
    out = tmp_path / "xavier-fp16"
    command = [sys.executable, "-m", "edgekit.cli", "build", str(EXAMPLE / "digits_cnn.pt2"), "--target",
               "jetson-xavier-fp16", "--calibration", str(EXAMPLE / "calibration.npz"), "--eval",
               str(EXAMPLE / "eval.npz"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    script = (out / "build_engine.sh").read_text()
    assert "7.2" in script and "--fp16" in script and "--int8" not in script
    assert (out / "model.onnx").is_file() and not (out / "model.qdq.onnx").exists()


NEW_ROUTE = '''"""A route written for tests/routes/test_routes.py: the float ONNX export ships as it is."""

from edgekit.routes import Route
from edgekit.routes.device import DeviceModel, onnx_bindings
from edgekit.runners.onnxrt import OnnxRunner


class PlainOnnxRoute(Route):
    name = "zzplainonnx"
    runtime = "onnxruntime"
    extra = None
    requires = ("onnxruntime",)
    precisions = ("fp32",)
    converted_by = "nothing: the float ONNX export ships as it is"

    def build(self, plan, export, workdir):
        runtime = {"name": "onnxruntime", "version": "test", "where": "host", "converter": "none",
                   "converter_version": None}
        return DeviceModel(path=export.path, bundle_name="model.onnx", float_path=export.path, runtime=runtime,
                           bindings=onnx_bindings(export), open_runner=OnnxRunner,
                           open_float_runner=lambda: OnnxRunner(export.path))


ROUTE = PlainOnnxRoute()
'''
NEW_TARGET = """name = "zzplainonnx-x86-fp32"
description = "the float ONNX export, as it is"
platform = "zzplainonnx"
arch = "x86"
format = "onnx"
precision = "fp32"
runtime = "onnxruntime"
route = "zzplainonnx"
converter = "none"
min_sqnr_db = 80.0
"""


def test_a_new_route_is_one_sub_package_plus_its_toml(tmp_path: Path):
    """A route is a folder under edgekit/routes/ and a target TOML that names it: nothing else is edited. The
    registry finds it, the build runs it, and the bundle's own check.py passes on its golden I/O."""
    package = ROOT / "edgekit" / "routes" / "zzplainonnx"
    package.mkdir()
    try:
        (package / "__init__.py").write_text('"""A route written by a test."""\n')
        (package / "route.py").write_text(NEW_ROUTE)
        (tmp_path / "targets").mkdir()
        (tmp_path / "targets" / "zzplainonnx-x86-fp32.toml").write_text(NEW_TARGET)
        out = tmp_path / "b"
        command = [sys.executable, "-m", "edgekit.cli", "build", str(EXAMPLE / "digits_cnn.pt2"), "--target",
                   "zzplainonnx-x86-fp32", "--calibration", str(EXAMPLE / "calibration.npz"), "--eval",
                   str(EXAMPLE / "eval.npz"), "--out", str(out)]
        env = {**os.environ, "EDGEKIT_TARGETS": str(tmp_path / "targets")}
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        report = json.loads((out / "report.json").read_text())
        assert report["target"] == "zzplainonnx-x86-fp32" and report["drift"]["passed"] is True
        assert report["drift"]["outputs"][0]["sqnr_db"] > 80
        check = subprocess.run([sys.executable, str(out / "check.py")], capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        shutil.rmtree(package)
    assert "zzplainonnx" not in route_names()


@pytest.mark.parametrize(("route", "precision", "message"), [
    ("litert", "int4", "route litert cannot put a layer in int4"),
    ("tensorrt", "float32", "route tensorrt cannot put a layer in float32"),
    ("onnxruntime", "int4", "route onnxruntime cannot put a layer in int4"),
])
def test_a_layer_precision_the_route_lacks_is_refused_with_exit_2(route, precision, message):
    from edgekit.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match=message) as info:
        get_route(route).set_precisions(None, {"relu": precision}, [{"tensor": "relu"}])
    assert info.value.exit_code == 2 and "can ship in" in info.value.hint


def test_the_ladder_depends_on_the_target():
    """LiteRT INT8 layers can go to 16x8 or float; a layer of a weight-only INT4 build only to float."""
    from edgekit.config.target import load_target
    from edgekit.errors import UnsupportedError

    litert = get_route("litert")
    assert litert.ladder(load_target("android-arm64-int8")) == ("int16x8", "float32")
    assert litert.ladder(load_target("android-arm64-w4")) == ("float32",)
    assert get_route("tensorrt").ladder(load_target("jetson-orin-int8")) == ("fp16",)
    with pytest.raises(UnsupportedError, match="route litert cannot put a layer in int16x8") as info:
        litert.set_precisions(None, {"relu": "int16x8"}, [{"tensor": "relu"}], load_target("android-arm64-w4"))
    assert info.value.hint == "layers of this build can ship in int4, float32"


def test_set_precisions_names_layers_by_their_tensor():
    from edgekit.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match=r"'features\.1' is not a quantized layer of this litert build"):
        get_route("litert").set_precisions(None, {"features.1": "float32"}, [{"tensor": "relu"}])
    unchanged = object()
    assert get_route("litert").set_precisions(unchanged, {"relu": "int8"}, [{"tensor": "relu"}]) is unchanged
