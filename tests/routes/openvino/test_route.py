"""The OpenVINO route (edgekit/routes/openvino/route.py): NNCF INT8 to an OpenVINO IR, measured in the OpenVINO runtime
on this host; check.py runs it with openvino alone; a missing extra is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edgekit
from edgekit.config.options import options_from_keywords
from edgekit.errors import UnsupportedError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "01_android_int8"


def _build(model, data, target: str, out: Path, **options) -> edgekit.BuildResult:
    return edgekit.build(model, target, calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out, options=options_from_keywords(**options))


@pytest.fixture(scope="module")
def ov_int8(digits, tmp_path_factory) -> edgekit.BuildResult:
    model, data = digits
    return _build(model, data, "openvino-x86-int8", tmp_path_factory.mktemp("openvino") / "int8")


def test_int8_keeps_the_digits_accuracy_in_the_openvino_runtime(ov_int8):
    report, out = ov_int8.report, ov_int8.out
    assert ov_int8.passed and report["drift"]["top1_agreement"] >= 0.99 and report["drift"]["accuracy_drop"] <= 0.5
    # global ranges and full bias correction: NNCF's defaults gave 21 dB on this model
    assert report["quantization"]["outputs"][0]["sqnr_db"] > 35
    assert report["runtime"]["name"] == "openvino" and report["runtime"]["converter"] == "nncf"
    assert report["latency_ms"]["host"] > 0  # measured in the OpenVINO runtime on this CPU
    xml, weights = out / "model.xml", out / "model.bin"
    assert xml.read_bytes().startswith(b"<?xml") and xml.read_text().count('type="FakeQuantize"') >= 2
    assert report["size"]["device_bytes"] == xml.stat().st_size + weights.stat().st_size
    assert weights.stat().st_size < 0.35 * report["size"]["float_device_bytes"]  # INT8 weights


def test_check_py_runs_the_ir_with_openvino_alone(ov_int8):
    done = subprocess.run([sys.executable, "check.py", "--json"], cwd=ov_int8.out, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["runtime"] == "openvino" and result["outputs"][0]["max_abs_err_vs_golden"] == 0.0


def test_fp32_is_exact_within_rounding(digits, tmp_path: Path):
    model, data = digits
    result = _build(model, data, "openvino-x86-fp32", tmp_path / "fp32")
    assert result.passed and result.report["drift"]["outputs"][0]["sqnr_db"] > 80  # f32 hint, not bf16
    assert result.report["drift"]["top1_agreement"] == 1.0


def test_calibration_methods_the_route_lacks_are_refused(digits, tmp_path: Path):
    model, data = digits
    with pytest.raises(UnsupportedError, match="--calibration-method entropy is not available on route openvino"):
        _build(model, data, "openvino-x86-int8", tmp_path / "e", calibration_method="entropy")


BLOCK_OPENVINO = """
import sys

class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("openvino", "nncf"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""


def test_a_missing_extra_is_named_with_exit_2(tmp_path: Path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(textwrap.dedent(BLOCK_OPENVINO))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    command = [sys.executable, "-m", "edgekit.cli", "build", str(EXAMPLE / "digits_cnn.pt2"), "--target",
               "openvino-x86-int8", "--calibration", str(EXAMPLE / "calibration.npz"), "--out", str(tmp_path / "b")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "route openvino needs openvino and nncf: not installed" in done.stderr
    assert "pip install 'edgekit[openvino]'" in done.stderr and not (tmp_path / "b").exists()


def test_per_layer_drift_names_the_culprit_and_fallback_keeps_it_in_float(digits, tmp_path: Path):
    """Per-layer drift read from the IR's FakeQuantize ops in the OpenVINO runtime; the fallback ignores the ops
    around the worst one through NNCF's IgnoredScope."""
    from tests.helpers import int8_breaking_copy

    model, data = digits
    broken = int8_breaking_copy(model)
    failed = _build(broken, data, "openvino-x86-int8", tmp_path / "minmax", max_drop=1.0, equalize="off")
    assert not failed.passed and failed.report["drift"]["accuracy_drop"] > 1.0
    worst, *rest = failed.report["layers"]
    assert (worst["module"], worst["op"]) == ("features.1", "FakeQuantize") and worst["sqnr_db"] < 10
    assert rest and all(r["sqnr_db"] > 30 for r in rest)
    fixed = _build(broken, data, "openvino-x86-int8", tmp_path / "auto", max_drop=1.0, fallback="auto",
                   equalize="off")
    assert fixed.passed and fixed.report["drift"]["accuracy_drop"] <= 1.0
    assert "features.4" in fixed.report["quantization"]["float_modules"]  # it reads the culprit's activation
    assert (fixed.report["layers"][0]["tensor"], fixed.report["layers"][0]["precision"]) == (worst["tensor"],
                                                                                            "float32")
    assert any(w.startswith("fallback auto kept 1 activation(s) out of INT8 (features.1 -> float32)")
               and w.endswith("passes") for w in fixed.report["warnings"])
    assert (tmp_path / "auto" / "model.xml").read_text().count('type="FakeQuantize"') < \
        (tmp_path / "minmax" / "model.xml").read_text().count('type="FakeQuantize"')


def test_nncf_accuracy_control_is_the_last_word(digits, tmp_path: Path):
    """The route's own fallback (used when the per-layer one is not enough): NNCF's accuracy control on the eval
    data keeps the op that reads the culprit's activation in float."""
    from edgekit.config.options import BuildOptions, Conversion
    from edgekit.pipeline.prepare import make_plan
    from edgekit.routes import get_route
    from edgekit.transform.export import export_onnx
    from tests.helpers import int8_breaking_copy

    model, data = digits
    options = BuildOptions(conversion=Conversion(equalize="off"))
    plan = make_plan(int8_breaking_copy(model), "openvino-x86-int8", (data["x_calib"], data["y_calib"]),
                     (data["x_eval"], data["y_eval"]), tmp_path / "out", options)
    export = export_onnx(plan.model, plan.inputs, tmp_path / "reference.onnx")
    device = get_route(plan.target.route).build(plan, export, tmp_path / "work")
    controlled = device.own_fallback()
    assert controlled.float_modules == ("features.4",)
    assert controlled.path.read_text().count('type="FakeQuantize"') < device.path.read_text().count(
        'type="FakeQuantize"')


@pytest.mark.emulator
def test_arm64_runs_the_arm_cpu_plugin_in_the_emulator(digits, emulator_root, tmp_path: Path):
    """openvino-arm64-int8: the same IR, measured on the x86 host and by OpenVINO's ARM CPU plugin under QEMU
    (other kernels, so equal within float rounding rather than bit for bit)."""
    from edgekit.bundle.check import check_bundle_dir
    from edgekit.standalone.check import saturating_host

    model, data = digits
    result = _build(model, data, "openvino-arm64-int8", tmp_path / "arm64", emulator="arm64", emulator_samples=32)
    block = result.report["emulator"]
    assert block["error"] is None and block["samples"] == 32 and block["passed"]
    # an x86 host without VNNI computes INT8 with other (saturating) kernels than the ARM plugin: measured 0.067 here
    assert max(block["max_abs_diff_vs_host"].values()) < (0.1 if saturating_host() else 1e-3)
    checked = check_bundle_dir(result.out, emulator="arm64")
    assert checked["passed"] and checked["runtime"] == "openvino (emulated)"


def test_the_x86_target_is_never_emulated(digits, tmp_path: Path):
    from edgekit.errors import ConfigError

    model, data = digits
    with pytest.raises(ConfigError, match="--emulator arm64 does not apply to openvino-x86-int8"):
        _build(model, data, "openvino-x86-int8", tmp_path / "x", emulator="arm64")
