"""`--qat` inside a build, on every INT8 route: the fine-tuned model ships, and the device model is compared with the
QAT simulation itself (report.json `qat.simulation_vs_device`); bad requests stop before any work (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgekit
from edgekit.config.options import BuildOptions, Qat, Verify
from tests.test_cli import leftovers, run

ROUTES = [("android-arm64-int8", "onnx2tf"), ("android-arm64-int8", "litert-torch"), ("onnxruntime-arm64-int8", None),
          ("openvino-x86-int8", None), ("android-arm64-executorch-int8", None), ("jetson-orin-int8", None)]


@pytest.mark.parametrize(("target", "converter"), ROUTES, ids=[f"{t}-{c}" if c else t for t, c in ROUTES])
def test_qat_ships_the_fine_tuned_model_and_measures_it_against_its_simulation(digits, target, converter,
                                                                              tmp_path: Path):
    model, data = digits
    options = BuildOptions(qat=Qat(steps=8), verify=Verify(emulator="host"),
                           conversion=edgekit.Conversion(converter=converter, equalize="off"))
    result = edgekit.build(model, target, calibration=(data["x_calib"], data["y_calib"]),
                           eval_data=(data["x_eval"], data["y_eval"]), out=tmp_path / "b", options=options)
    report = result.report  # written only after it validated against the schema
    qat = report["qat"]
    assert (qat["steps"], qat["steps_done"], qat["rung"]) == (8, 8, "asked")
    assert qat["loss"] == "distillation + cross-entropy" and qat["labels"] is True
    assert qat["data"] == {"calibration_samples": len(data["x_calib"]), "train_samples": 0, "train_sha256": None}
    assert report["timings_s"]["qat"] > 0 and len(qat["loss_curve"]) == 8
    symmetric = target.startswith("jetson")
    assert ("symmetric INT8 activations" in qat["quantizer"]) == symmetric
    [after] = qat["simulation_after"]["outputs"]
    [device] = qat["simulation_vs_device"]["outputs"]
    assert qat["simulation_vs_device"]["samples"] == len(data["x_eval"])
    # INT8-close to the float model, and the device model computes what was simulated (a gap is the export's)
    assert after["top1_agreement"] >= 0.99 and 25.0 <= after["sqnr_db"] < 70.0
    assert device["top1_agreement"] >= 0.99 and device["sqnr_db"] >= 25.0
    assert result.passed and report["drift"]["accuracy_drop"] <= 1.0
    assert "qat" in (tmp_path / "b" / "report.html").read_text()


def test_bad_qat_requests_stop_before_any_work(digits_files, tmp_path: Path):
    common = ["--calibration", digits_files["calib"], "--eval", digits_files["eval"], "--emulator", "host"]
    cases = [
        (["--target", "android-arm64-fp32", "--qat", "10"],
         "--qat simulates INT8 quantization; android-arm64-fp32 is fp32"),
        (["--target", "android-arm64-int8", "--qat", "auto"], "--qat auto is the last rung of --fallback auto"),
        (["--target", "android-arm64-int8", "--qat", "ten"], "qat = 'ten' is neither a number of steps nor 'auto'"),
        (["--target", "android-arm64-int8", "--train", digits_files["calib"]],
         "--train gives data to --qat, which is not asked for"),
        (["--target", "android-arm64-int8", "--qat", "5", "--train", tmp_path / "missing.npz"], "missing.npz"),
    ]
    for extra, message in cases:
        result = run("build", digits_files["pt2"], *common, *extra, "--out", tmp_path / "b")
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output and not (tmp_path / "b").exists()
    assert leftovers(tmp_path) == []


def test_qat_auto_is_the_last_rung_of_the_fallback(digits, tmp_path: Path):
    """A model whose INT8 fails and whose ladder has no room (no layer may leave INT8): QAT is tried, its row ends
    the ladder, and the report says whether it shipped and what it cost."""
    from tests.helpers import int8_breaking_copy

    model, data = digits
    options = BuildOptions(qat=Qat(steps="auto"), verify=Verify(emulator="host"),
                           conversion=edgekit.Conversion(equalize="off"),
                           fallback=edgekit.Fallback("auto", max_float_layers=0))
    result = edgekit.build(int8_breaking_copy(model), "jetson-orin-int8", options=options, out=tmp_path / "b",
                           calibration=(data["x_calib"], data["y_calib"]), eval_data=(data["x_eval"], data["y_eval"]))
    report = result.report
    qat, last = report["qat"], report["quantization"]["ladder"][-1]
    assert (qat["rung"], qat["steps"], last["rung"], last["module"]) == ("fallback", 300, "qat", "(every layer)")
    assert last["seconds"] == qat["seconds"] and report["timings_s"]["qat"] >= qat["seconds"]
    assert qat["shipped"] == last["passed"] == last["kept"] == result.passed
    [line] = [w for w in report["warnings"] if "quantization-aware fine-tuning" in w]
    assert ("ships" if qat["shipped"] else "the ladder's model ships") in line
