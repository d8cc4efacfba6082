"""`--qat` inside a build, on every INT8 route: the fine-tuned model ships, and the device model is compared with the
QAT simulation itself (report.json `qat.simulation_vs_device`); bad requests stop before any work (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgekit
from edgekit.config.options import BuildOptions, Qat, Verify
from edgekit.pipeline.qat import GAP_DB, layer_gaps, qat_warnings, simulated_layers, tensor_order
from tests.test_cli import leftovers, run

ROUTES = [("android-arm64-int8", "onnx2tf"), ("android-arm64-int8", "litert-torch"), ("onnxruntime-arm64-int8", None),
          ("openvino-x86-int8", None), ("android-arm64-executorch-int8", None), ("jetson-orin-int8", None)]


@pytest.mark.slow
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
    # layer by layer too: every module's output in the device model is as close to the float model as simulated (a
    # simulation that rounds where the device does not, such as a BatchNorm the conv absorbs, shows here too)
    layers = qat["simulation_vs_device"]["layers"]
    assert len(layers) >= 3 and {"features.2", "classifier.2"} <= {row["module"] for row in layers}
    assert qat["simulation_vs_device"]["first_gap"] is None and max(abs(row["gap_db"]) for row in layers) < GAP_DB


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_device_model_that_departs_from_the_simulation_is_named_at_the_module_where_it_does(digits, tmp_path: Path):
    """The simulation of the digits model beside a device model that does not compute what was simulated: the same
    function with block 1's activation range ruined (one channel x1000), built to INT8. The comparison names the
    first module whose output departs: block 2's ReLU, the first to read the channels block 1's range zeroed (block
    1's own output, dominated by the x1000 channel, still matches as a whole), not a later one that inherits it."""
    from edgekit.config.target import list_targets
    from edgekit.routes import get_route
    from edgekit.transform.qat import Data, fine_tune
    from tests.helpers import int8_breaking_copy

    model, data = digits
    target = next(t for t in list_targets() if t.name == "onnxruntime-arm64-int8")
    quantizer, _ = get_route(target.route).qat_quantizer(target)
    tuned = fine_tune(model, Data((data["x_calib"],)), quantizer, steps=2, seconds=60, seed=0)
    device = edgekit.build(int8_breaking_copy(model), target.name, out=tmp_path / "b",
                           calibration=(data["x_calib"], data["y_calib"]), eval_data=(data["x_eval"], data["y_eval"]),
                           options=BuildOptions(verify=Verify(emulator="host"),
                                                conversion=edgekit.Conversion(equalize="off")))
    layers = device.report["layers"]
    simulated = simulated_layers(tuned, (data["x_eval"][:32],))  # the samples the device's layers were measured on
    rows = layer_gaps(simulated, layers, tensor_order(tmp_path / "b" / "reference.onnx"))
    first = next(row for row in rows if row["gap_db"] >= GAP_DB)
    assert (first["module"], first["op"], first["simulation_op"]) == ("features.5", "QuantizeLinear", "relu")
    assert first["device_sqnr_db"] < 10.0 and first["simulation_sqnr_db"] > 30.0
    assert rows[0]["module"] == "features.2" and rows[0]["gap_db"] < GAP_DB
    [line] = qat_warnings({"simulation_vs_device": {"first_gap": first}})
    assert line.startswith("qat: the device model departs from the QAT simulation at module features.5 (device op "
                           "QuantizeLinear, simulated relu)")


@pytest.mark.slow
def test_qat_auto_keeps_out_of_the_simulation_what_the_ladder_kept_out_of_int8(digits, tmp_path: Path, monkeypatch):
    """Block 1's activation range ruined (x1000) and block 2's damaged (x150), room for one float layer and no
    back-off (left out here: tests/pipeline/test_fallback.py): the ladder moves block 1 to float and still misses a
    0.2-point gate; QAT then fine-tunes with block 1 unquantized in the simulation (and the conv that reads it in
    float, as ONNX Runtime builds it) and builds with it kept out again: the device computes what was simulated."""
    from edgekit.pipeline import fallback
    from tests.helpers import int8_breaking_copy, pooled_breaking_copy

    monkeypatch.setattr(fallback, "back_off_rungs", lambda route, target: [])

    model, data = digits
    options = BuildOptions(qat=Qat(steps="auto", seconds=60), verify=Verify(emulator="host"),
                           conversion=edgekit.Conversion(equalize="off"), gate=edgekit.Gate(max_drop=0.2),
                           fallback=edgekit.Fallback("auto", max_float_layers=1, max_size=100_000))
    result = edgekit.build(pooled_breaking_copy(int8_breaking_copy(model), 150.0), "onnxruntime-arm64-int8",
                           options=options, out=tmp_path / "b", calibration=(data["x_calib"], data["y_calib"]),
                           eval_data=(data["x_eval"], data["y_eval"]))
    report = result.report
    qat, last = report["qat"], report["quantization"]["ladder"][-1]
    moved = [row for row in report["layers"] if row["precision"] != "int8"]
    assert [row["module"] for row in moved] == ["features.1"]
    assert qat["kept_out"] == sorted(moved[0]["modules"]) and (last["rung"], last["module"]) == (
        "qat", "(every other layer)")
    versus = qat["simulation_vs_device"]
    assert versus["layers"] and not {row["module"] for row in versus["layers"]} & set(qat["kept_out"])
    # with block 1 simulated in INT8 (or the conv reading it with INT8 weights), the two were 2.8 dB apart
    [output] = versus["outputs"]
    assert output["sqnr_db"] >= 30.0 and versus["first_gap"] is None
    assert qat["simulation_before"]["outputs"][0]["top1_agreement"] >= 0.95
