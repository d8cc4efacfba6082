"""Precisions beyond INT8 on the LiteRT route: 16x8, dynamic-range INT8 and weight-only INT4, each built from the
same float32 model by ai-edge-quantizer and drift-gated like every build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.config.options import options_from_keywords
from edgekit.errors import UnsupportedError

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")


def _build(digits_files, target: str, out: Path, **kwargs) -> edgekit.BuildResult:
    return edgekit.build(digits_files["pt2"], target, calibration=kwargs.pop("calibration", digits_files["calib"]),
                         eval_data=digits_files["eval"], out=out,
                         options=options_from_keywords(emulator=kwargs.pop("emulator", "host"), **kwargs))


@pytest.fixture(scope="module")
def builds(digits_files, tmp_path_factory) -> dict[str, edgekit.BuildResult]:
    root = tmp_path_factory.mktemp("precisions")
    found = {p: _build(digits_files, f"android-arm64-{p}", root / p) for p in ("int8", "int16x8", "w4")}
    found["dynamic-int8"] = _build(digits_files, "android-arm64-dynamic-int8", root / "dynamic", calibration=None)
    return found


def _weight_only_int8_sqnr(digits, tmp_path: Path) -> float:
    """Quantization SQNR of INT8 weights with float activations (ai-edge-quantizer's weight-only recipe) over the
    eval data: what remains of 16x8's error when its activations are exact."""
    import torch
    from ai_edge_quantizer import quantizer, recipe

    from edgekit.measure.drift import sqnr_db
    from edgekit.routes.litert.litert_torch import convert_float
    from edgekit.routes.litert.runner import open_interpreter

    model, data = digits
    x = data["x_eval"].astype(np.float32)
    float_path, _ = convert_float(model.eval(), (torch.from_numpy(x[:1]),), tmp_path / "float.tflite")
    result = quantizer.Quantizer(str(float_path), recipe.weight_only_wi8_afp32()).quantize()
    (tmp_path / "w8.tflite").write_bytes(bytes(result.quantized_model))

    def run(path: Path) -> np.ndarray:
        runner = open_interpreter(path).get_signature_runner()
        return np.concatenate([next(iter(runner(args_0=x[i:i + 1]).values())) for i in range(len(x))])

    return sqnr_db(run(float_path), run(tmp_path / "w8.tflite"))


@pytest.mark.slow
def test_int16x8_is_as_faithful_as_int8_weights_with_float_activations(builds, digits, tmp_path: Path):
    report = builds["int16x8"].report
    assert builds["int16x8"].passed and report["target"] == "android-arm64-int16x8"
    sqnr16 = report["quantization"]["outputs"][0]["sqnr_db"]
    assert abs(sqnr16 - _weight_only_int8_sqnr(digits, tmp_path)) <= 1.0  # the weights' error is what remains
    assert sqnr16 >= builds["int8"].report["quantization"]["outputs"][0]["sqnr_db"] + 3.0
    assert report["quantization"]["method"] == "minmax"
    assert {row["precision"] for row in report["layers"]} == {"int16x8"}
    assert {row["module"] for row in report["layers"]} >= {"features.1", "features.4", "classifier.1", "classifier.3"}


def test_dynamic_int8_needs_no_calibration_and_quantizes_every_weighted_layer(builds):
    report = builds["dynamic-int8"].report
    assert builds["dynamic-int8"].passed and report["quantization"]["method"] is None
    assert report["drift"]["accuracy_drop"] <= 1.0
    rows = {row["module"]: row for row in report["layers"]}
    assert set(rows) == {"features.1", "features.4", "classifier.1", "classifier.3"}
    assert all(r["precision"] == "int8" and r["sqnr_db"] > 35.0 for r in rows.values())  # per-channel INT8 weights
    assert report["size"]["device_bytes"] < 0.35 * report["size"]["float_device_bytes"]


def test_w4_reports_which_layers_got_int4(builds):
    report = builds["w4"].report
    rows = {row["module"]: row for row in report["layers"]}
    assert {m for m, r in rows.items() if r["precision"] == "int4"} == {"features.4", "classifier.1", "classifier.3"}
    depthwise = rows["features.1"]  # one input channel: a DEPTHWISE_CONV_2D, which the recipe leaves in float
    assert depthwise["precision"] == "float32" and depthwise["op"] == "DEPTHWISE_CONV_2D"
    assert depthwise["chosen_because"] == ("the quantizer has no int4 weights for DEPTHWISE_CONV_2D: kept in float")
    assert all(15.0 < r["sqnr_db"] < 30.0 for r in rows.values() if r["precision"] == "int4")  # 4-bit weights
    assert report["size"]["device_bytes"] < 0.65 * builds["dynamic-int8"].report["size"]["device_bytes"]
    assert builds["w4"].passed  # the digits still classify: drop within --max-drop 1


def test_a_calibration_method_on_a_precision_without_calibration_is_refused(digits_files, tmp_path: Path):
    with pytest.raises(UnsupportedError, match="android-arm64-w4 quantizes weights only") as caught:
        _build(digits_files, "android-arm64-w4", tmp_path / "b", calibration_method="entropy")
    assert caught.value.exit_code == 2 and not (tmp_path / "b").exists()


def test_an_op_the_runtime_has_no_kernel_for_is_named(builds, tmp_path: Path):
    """A 16x8 model whose op converts but has no kernel in this LiteRT (an op version it does not register)."""
    from ai_edge_litert.tools import flatbuffer_utils

    from edgekit.routes.litert.runner import open_interpreter

    model = flatbuffer_utils.read_model(str(builds["int16x8"].out / "model.tflite"))
    for code in model.operatorCodes:
        if code.builtinCode == 3:  # CONV_2D
            code.version = 99
    flatbuffer_utils.write_model(model, str(tmp_path / "m.tflite"))
    with pytest.raises(UnsupportedError, match=r"m.tflite does not run in LiteRT [\d.]+: no kernel for CONV_2D "
                                               r"version 99") as caught:
        open_interpreter(tmp_path / "m.tflite")
    assert caught.value.exit_code == 2


@pytest.mark.emulator
def test_int16x8_in_the_emulator_is_bit_exact_with_the_host(emulator_root, digits_files, tmp_path: Path):
    result = _build(digits_files, "android-arm64-int16x8", tmp_path / "b", emulator="arm64", emulator_samples=32)
    block = result.report["emulator"]
    assert block["samples"] == 32 and block["bit_exact_with_host"] is True and block["passed"] is True


@pytest.mark.slow
def test_an_onnx_model_takes_onnx2tf_and_the_same_quantizer(digits, tmp_path: Path):
    import torch

    model, data = digits
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), tmp_path / "digits.onnx", dynamo=False,
                      input_names=["x"], output_names=["logits"])
    result = edgekit.build(tmp_path / "digits.onnx", "android-arm64-int16x8", calibration=data["x_calib"],
                           eval_data=(data["x_eval"], data["y_eval"]), out=tmp_path / "b",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")))
    report = result.report
    assert result.passed and report["runtime"]["converter"] == "onnx2tf"
    assert report["quantization"]["outputs"][0]["sqnr_db"] > 40.0
    assert {row["precision"] for row in report["layers"]} == {"int16x8"}


def test_a_weight_method_of_the_quantizer_reaches_the_model_and_the_report(builds, digits_files, tmp_path: Path):
    """OCTAV picks each INT4 weight channel's clipping range itself: the weights differ from min/max's, the
    report says which method made them, and the build is drift-gated like any other."""
    octav = _build(digits_files, "android-arm64-w4", tmp_path / "octav", calibration=None,
                   calibration_method=edgekit.Calibration(weights="octav"))
    assert octav.report["quantization"]["weight_method"] == "octav"
    assert builds["w4"].report["quantization"]["weight_method"] == "minmax"
    rows = {r["module"]: r for r in octav.report["layers"]}
    minmax = {r["module"]: r for r in builds["w4"].report["layers"]}
    assert {m for m, r in rows.items() if r["precision"] == "int4"} == {"features.4", "classifier.1", "classifier.3"}
    assert any(abs(rows[m]["sqnr_db"] - minmax[m]["sqnr_db"]) > 0.1 for m in ("features.4", "classifier.1"))
    assert octav.passed


@pytest.mark.parametrize(("target", "message"), [
    ("android-arm64-fp32", "--weight-method octav does not apply: android-arm64-fp32 is not quantized"),
    ("onnxruntime-arm64-int8", "--weight-method octav is not available on route onnxruntime"),
])
def test_a_weight_method_where_it_does_not_apply_is_refused(target, message, digits_files, tmp_path: Path):
    with pytest.raises(UnsupportedError, match=message) as caught:
        _build(digits_files, target, tmp_path / "b", calibration_method=edgekit.Calibration(weights="octav"))
    assert caught.value.exit_code == 2 and not (tmp_path / "b").exists()


def test_a_weight_method_leaves_every_other_op_quantized(digits, tmp_path: Path):
    """MSE has rules for weighted ops only: the other ops (pooling, reshape, the I/O) stay on INT8 min/max."""
    import torch

    from edgekit.routes.litert.litert_torch import convert_float
    from edgekit.routes.litert.quantize import collect_ranges, quantize_tflite
    from edgekit.routes.litert.runner import open_interpreter

    model, data = digits
    x = data["x_calib"][:32].astype(np.float32)
    path, _ = convert_float(model.eval(), (torch.from_numpy(x[:1]),), tmp_path / "float.tflite")
    ranges = collect_ranges(path, [{"args_0": x[i:i + 1]} for i in range(len(x))])
    interpreter = open_interpreter(quantize_tflite(path, ranges, tmp_path / "mse.tflite", io="int8", weights="mse"))
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    kinds = {(op["op_name"], np.dtype(details[int(op["outputs"][0])]["dtype"]).name)
             for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"}
    assert {dtype for _, dtype in kinds} == {"int8"} and ("MAX_POOL_2D", "int8") in kinds
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]).name == "int8"
