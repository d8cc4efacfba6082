"""End to end through the Python API with real torch.onnx, onnx2tf and LiteRT."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import edgekit
from edgekit.bundle.report import report_schema
from tests.helpers import int8_breaking_copy

BUNDLE_FILES = {"model.tflite", "reference.onnx", "manifest.json", "report.json", "report.html", "check.py",
                "golden/inputs.npz", "golden/outputs.npz"}


def bundle_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_int8_bundle_meets_the_acceptance_numbers(int8_bundle):
    drift = int8_bundle.report["drift"]
    assert drift["samples"] == 360
    assert drift["top1_agreement"] >= 0.99
    assert drift["accuracy_drop"] <= 0.5
    assert drift["reference_accuracy"] >= 0.98
    size = int8_bundle.report["size"]
    assert size["device_bytes"] <= 0.35 * size["float_device_bytes"]
    assert int8_bundle.passed and drift["passed"]


def test_int8_report_separates_conversion_from_quantization_error(int8_bundle):
    report = int8_bundle.report
    conversion, quantization = report["conversion"]["outputs"][0], report["quantization"]["outputs"][0]
    assert conversion["sqnr_db"] > 80 and conversion["max_abs_err"] < 1e-4
    assert 25 < quantization["sqnr_db"] < 80
    assert report["quantization"]["method"] == "minmax"
    assert report["runtime"]["converter"] == "onnx2tf" and report["runtime"]["converter_version"] == "1.29.24"


def test_bundle_holds_the_contract_files_and_a_valid_report(int8_bundle):
    assert bundle_files(int8_bundle.out) >= BUNDLE_FILES
    report = json.loads((int8_bundle.out / "report.json").read_text())
    jsonschema.validate(report, report_schema())
    assert report == json.loads(json.dumps(int8_bundle.report))
    assert set(report) == set(report_schema()["required"])


def test_manifest_records_lineage_and_the_device_signature(int8_bundle, digits):
    manifest = json.loads((int8_bundle.out / "manifest.json").read_text())
    assert manifest["model"]["sha256"] == int8_bundle.report["model"]["sha256"]
    assert manifest["data"]["calibration"]["samples"] == 300 and manifest["data"]["eval"]["kind"] == "eval"
    assert manifest["versions"]["onnx2tf"] == "1.29.24" and manifest["versions"]["torch"].startswith("2.13")
    assert manifest["seed"] == 0 and manifest["config"]["options"]["max_drop"] == 1.0
    [inp] = manifest["device"]["signature"]["inputs"]
    assert inp["shape"] == [1, 1, 8, 8] and inp["device_layout"] == "NHWC" and inp["device_dtype"] == "float32"
    [binding] = manifest["device"]["outputs"]
    assert binding["model_name"] == "output" and binding["device_name"] == "PartitionedCall:0"
    for name, digest in manifest["files"].items():
        assert edgekit.inputs.model.sha256_file(int8_bundle.out / name) == digest


def test_golden_files_are_in_model_layout(int8_bundle):
    with np.load(int8_bundle.out / "golden" / "inputs.npz") as inputs, \
            np.load(int8_bundle.out / "golden" / "outputs.npz") as outputs:
        assert inputs["input"].shape == (16, 1, 8, 8)
        assert set(outputs.files) == {"reference/output", "device/output"}
        assert outputs["device/output"].shape == (16, 10)


def _check_py(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "check.py", *args], cwd=bundle, capture_output=True, text=True,
                          timeout=120)


def test_check_py_passes_in_the_bundle_and_fails_on_a_swapped_model(int8_bundle, tmp_path: Path):
    done = _check_py(int8_bundle.out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASSED" in done.stdout
    copy = tmp_path / "copy"
    shutil.copytree(int8_bundle.out, copy)
    float_model = tmp_path / "perturbed.tflite"
    _perturbed_copy(int8_bundle, float_model)
    shutil.copyfile(float_model, copy / "model.tflite")
    swapped = _check_py(copy)
    assert swapped.returncode == 3, swapped.stdout
    assert "model.tflite differs from the sha256 in manifest.json" in swapped.stderr
    assert swapped.stdout == ""  # refused before it ran


def _perturbed_copy(bundle, target: Path) -> None:
    """A different model with the same I/O: the INT8 model's weights perturbed, written as a new file."""
    data = bytearray((bundle.out / "model.tflite").read_bytes())
    data[len(data) // 2: len(data) // 2 + 4000] = bytes(4000)  # zero a stretch of the INT8 weights
    target.write_bytes(bytes(data))


def test_check_py_compares_outputs_when_asked_for_another_file(int8_bundle, tmp_path: Path):
    model = tmp_path / "other.tflite"
    _perturbed_copy(int8_bundle, model)
    done = _check_py(int8_bundle.out, "--model", str(model), "--json")
    result = json.loads(done.stdout)
    assert done.returncode == 3 and result["model_sha256_matches"] is False
    assert result["outputs"][0]["passed"] is False
    assert result["outputs"][0]["max_abs_err_vs_golden"] > result["outputs"][0]["atol"]


def test_edgekit_check_reruns_golden_and_eval(int8_bundle, digits_files):
    result = edgekit.check(int8_bundle.out, eval_data=digits_files["eval"])
    assert result["passed"] and result["outputs"][0]["max_abs_err_vs_golden"] == 0.0
    assert result["drift"]["samples"] == 360
    assert result["drift"]["top1_agreement"] == int8_bundle.report["drift"]["top1_agreement"]


@pytest.mark.slow
def test_int8_breaking_model_exits_3_with_a_bundle_marked_failed(digits, tmp_path: Path):
    model, data = digits
    broken = int8_breaking_copy(model)
    out = tmp_path / "broken"
    result = edgekit.build(broken, "android-arm64-int8", calibration=(data["x_calib"], data["y_calib"]),
                           eval_data=(data["x_eval"], data["y_eval"]), out=out,
                           options=edgekit.BuildOptions(gate=edgekit.Gate(max_drop=1.0),
                                                        verify=edgekit.Verify(emulator="host"),
                                                        conversion=edgekit.Conversion(equalize="off")))
    assert not result.passed and result.report["drift"]["passed"] is False
    assert result.report["drift"]["accuracy_drop"] > 1.0
    assert result.report["conversion"]["outputs"][0]["sqnr_db"] > 80  # float conversion is fine: INT8 broke it
    assert bundle_files(out) >= BUNDLE_FILES
    assert json.loads((out / "report.json").read_text())["drift"]["passed"] is False
    with pytest.raises(edgekit.DriftError) as info:
        result.raise_for_drift()
    assert info.value.exit_code == 3 and "accuracy drop" in info.value.message


@pytest.mark.slow
def test_building_twice_gives_the_same_bytes_and_numbers(digits_files, tmp_path: Path):
    results = [edgekit.build(digits_files["pt2"], "android-arm64-int8", calibration=digits_files["calib"],
                             eval_data=digits_files["eval"], out=tmp_path / f"b{i}",
                             options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")))
               for i in range(2)]
    first, second = ((r.out / "model.tflite").read_bytes() for r in results)
    assert first == second
    assert results[0].report["drift"] == results[1].report["drift"]


@pytest.mark.slow
@pytest.mark.parametrize("target, min_sqnr", [("android-arm64-fp32", 80.0), ("android-arm64-fp16", 40.0)])
def test_float_targets(target, min_sqnr, digits_files, tmp_path: Path):
    result = edgekit.build(digits_files["pt2"], target, calibration=digits_files["calib"],
                           eval_data=digits_files["eval"], out=tmp_path / "b",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")))
    drift = result.report["drift"]
    assert result.passed and drift["top1_agreement"] == 1.0
    assert drift["outputs"][0]["sqnr_db"] >= min_sqnr
    assert (result.report["quantization"] is None) == (target == "android-arm64-fp32")
    if target == "android-arm64-fp16":
        assert result.report["size"]["device_bytes"] < 0.6 * result.report["size"]["float_device_bytes"]


@pytest.mark.slow
def test_int8_io_selects_the_full_integer_file(digits_files, tmp_path: Path):
    result = edgekit.build(digits_files["ts"], "android-arm64-int8", calibration=digits_files["calib"],
                           eval_data=digits_files["eval"], out=tmp_path / "b",
                           options=edgekit.BuildOptions(conversion=edgekit.Conversion(io="int8"),
                                                        verify=edgekit.Verify(emulator="host")))
    manifest = json.loads((result.out / "manifest.json").read_text())
    assert manifest["device"]["inputs"][0]["dtype"] == "int8" and manifest["device"]["outputs"][0]["dtype"] == "int8"
    assert result.passed and result.report["drift"]["top1_agreement"] >= 0.99
    assert _check_py(result.out).returncode == 0


@pytest.mark.slow
def test_without_eval_data_drift_is_measured_on_held_out_calibration(digits_files, tmp_path: Path):
    result = edgekit.build(digits_files["pt2"], "android-arm64-int8", calibration=digits_files["calib"],
                           out=tmp_path / "b", options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")))
    assert result.report["drift"]["samples"] == 60
    assert any("held-out calibration" in w for w in result.report["warnings"])
