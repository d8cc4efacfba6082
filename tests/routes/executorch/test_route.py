"""The ExecuTorch route (edgekit/routes/executorch/route.py): PT2E INT8 with the XNNPACK quantizer, lowered to an
XNNPACK-delegated .pte, measured in ExecuTorch's runtime; check.py runs it; ONNX models are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import edgekit
from edgekit.errors import UnsupportedError


def _build(model, data, target: str, out: Path, **options) -> edgekit.BuildResult:
    return edgekit.build(model, target, calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out, **options)


@pytest.fixture(scope="module")
def et_int8(digits, tmp_path_factory) -> edgekit.BuildResult:
    model, data = digits
    return _build(model, data, "android-arm64-executorch-int8", tmp_path_factory.mktemp("executorch") / "int8")


@pytest.mark.slow
def test_int8_keeps_the_digits_accuracy_with_every_op_in_xnnpack(et_int8):
    report, out = et_int8.report, et_int8.out
    assert et_int8.passed and report["drift"]["top1_agreement"] >= 0.99 and report["drift"]["accuracy_drop"] <= 0.5
    assert report["quantization"]["outputs"][0]["sqnr_db"] > 30
    assert report["conversion"]["outputs"][0]["sqnr_db"] > 80  # the float .pte against PyTorch
    assert "executorch: every op runs in XNNPACK (1 delegated subgraph(s), no portable kernels)" in report["warnings"]
    assert (out / "model.pte").read_bytes()[4:8] == b"ET12"
    assert report["size"]["device_bytes"] < 0.35 * report["size"]["float_device_bytes"]


def test_check_py_runs_the_program_with_executorch(et_int8):
    done = subprocess.run([sys.executable, "check.py", "--json"], cwd=et_int8.out, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["runtime"] == "executorch" and result["outputs"][0]["max_abs_err_vs_golden"] == 0.0


def test_fp32_is_exact_within_rounding(digits, tmp_path: Path):
    model, data = digits
    result = _build(model, data, "android-arm64-executorch-fp32", tmp_path / "fp32")
    assert result.passed and result.report["drift"]["outputs"][0]["sqnr_db"] > 80
    assert result.report["drift"]["top1_agreement"] == 1.0


def test_an_onnx_model_is_refused_before_any_work(int8_bundle, digits, tmp_path: Path):
    _, data = digits
    with pytest.raises(UnsupportedError, match=r"route executorch converts torch\.export programs and nn\.Modules"):
        edgekit.build(int8_bundle.out / "reference.onnx", "android-arm64-executorch-int8",
                      calibration=data["x_calib"], out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_per_layer_drift_names_the_culprit_and_fallback_keeps_it_in_float(digits, tmp_path: Path):
    """The outlier fixture at --equalize off fails its gate; per-layer drift (on the PT2E simulation: XNNPACK
    hides intermediates) ranks its widened activation first; --fallback auto keeps the ops around it in float."""
    from tests.helpers import int8_breaking_copy

    model, data = digits
    broken = int8_breaking_copy(model)
    failed = _build(broken, data, "android-arm64-executorch-int8", tmp_path / "off", equalize="off")
    assert not failed.passed and failed.report["drift"]["accuracy_drop"] > 1.0
    worst, *rest = failed.report["layers"]
    assert worst["modules"] == ["features.0", "features.1", "features.2"] and worst["sqnr_db"] < 10
    assert rest and all(r["sqnr_db"] > 30 for r in rest)
    assert any(w.startswith("executorch: per-layer drift measured on the PT2E INT8 simulation")
               for w in failed.report["warnings"])
    fixed = _build(broken, data, "android-arm64-executorch-int8", tmp_path / "auto", equalize="off",
                   fallback="auto")
    assert fixed.passed and fixed.report["drift"]["accuracy_drop"] <= 1.0
    assert fixed.report["quantization"]["float_modules"] == ["features.0", "features.1", "features.2", "features.3"]
    assert (fixed.report["layers"][0]["tensor"], fixed.report["layers"][0]["precision"]) == (worst["tensor"],
                                                                                            "float32")
    assert "executorch: every op runs in XNNPACK (1 delegated subgraph(s), no portable kernels)" in \
        fixed.report["warnings"]  # the float ops run in XNNPACK's fp32 kernels
