"""The float32 conversion check: outputs against onnxruntime, the first diverging ONNX node named with its
PyTorch module, exit 2 unless accepted, and repairs recorded in the manifest and report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

import edgekit
from edgekit.bundle.report import summary_lines, validate_report
from edgekit.cli import main
from edgekit.routes.litert.fidelity import FloatCheck, relative_max_error, static_tensors, unmatched_region


class Scale(torch.nn.Module):
    """x times a (1, 1, 4, 4) constant: onnx2tf broadcasts it wrongly on a (1, 4, 4, 4) tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("factor", torch.linspace(0.5, 2.0, 16).reshape(1, 1, 4, 4))

    def forward(self, x):
        return x * self.factor


class WrongConversionNet(torch.nn.Module):
    """A padded MaxPool (repaired), a conv down to (4, 4, 4) and, there, an op onnx2tf converts wrongly (the ReLU
    keeps the converter from folding the Mul into the conv, which would make the conv the first diverging node)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.MaxPool2d(3, 2, padding=1)
        self.conv = torch.nn.Conv2d(4, 4, (1, 2))
        self.scale = Scale()
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.scale(torch.relu(self.conv(self.pool(x)))))


def wrong_conversion_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return WrongConversionNet().eval()


def samples(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 4, 8, 10)).astype(np.float32)


def test_relative_max_error():
    assert relative_max_error(np.array([2.0, -4.0]), np.array([2.0, -3.0])) == 0.25
    assert relative_max_error(np.zeros(3), np.array([0.0, 0.5, 0.0])) == 0.5
    assert relative_max_error(np.ones(2), np.array([1.0, np.nan])) == float("inf")
    assert relative_max_error(np.array([1.0, np.nan]), np.array([1.0, 5.0])) == 0.0  # the reference's own NaN


def test_the_walk_back_stops_at_agreeing_tensors_and_skips_constants():
    nodes = [helper.make_node("Constant", [], ["k"], name="const", value=helper.make_tensor("v", 1, [1], [2.0])),
             helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Mul", ["a", "k"], ["b"], name="mul"),
             helper.make_node("Neg", ["b"], ["y"], name="neg")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert static_tensors(graph) == {"k"}
    good = {"x", "a"} | static_tensors(graph)
    assert unmatched_region(graph, ["y"], good) == {"neg", "mul"}
    assert unmatched_region(graph, ["y"], good | {"b"}) == {"neg"}


def test_the_message_names_node_op_and_module():
    check = FloatCheck({"output": 0.61}, 1e-4, {"onnx_node": "node_mul", "op_type": "Mul", "module": "scale",
                                                  "max_rel_err": 0.6}, ["output"])
    assert not check.faithful
    assert check.message() == ("float32 conversion is wrong beyond rounding: max relative error output 0.61 > 0.0001 "
                               "(float32 TFLite vs ONNX in onnxruntime); first diverging ONNX node node_mul (Mul) "
                               "from PyTorch module scale")
    assert FloatCheck({"output": 1e-7}, 1e-4).faithful


@pytest.mark.slow
def test_a_wrong_float32_conversion_stops_an_explicit_converter_with_exit_2(tmp_path: Path):
    with pytest.raises(edgekit.errors.UnsupportedError) as info:
        edgekit.build(wrong_conversion_net(), "android-arm64-int8", calibration=samples(48, 0),
                      out=tmp_path / "b",
                      options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                   conversion=edgekit.Conversion(converter="onnx2tf")))
    assert info.value.exit_code == 2
    assert "first diverging ONNX node node_mul (Mul) from PyTorch module scale" in info.value.message
    assert "--accept-conversion-error" in info.value.hint
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_the_default_converter_gives_way_to_the_exact_one(tmp_path: Path):
    """No --converter: onnx2tf (the target's default) gets this model wrong, so litert-torch's exact model ships,
    and the summary, the report and the manifest say why."""
    result = edgekit.build(wrong_conversion_net(), "android-arm64-int8", calibration=samples(48, 0),
                           out=tmp_path / "b", options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")))
    assert result.report["runtime"]["converter"] == "litert-torch"
    assert min(o["sqnr_db"] for o in result.report["conversion"]["outputs"]) > 80
    [warning] = [w for w in result.report["warnings"] if w.startswith("converter: onnx2tf, the target's default")]
    assert "first diverging ONNX node node_mul (Mul)" in warning and "built with litert-torch instead" in warning
    record = result.manifest["device"]["converter"]
    assert (record["requested"], record["name"]) == ("onnx2tf", "litert-torch")
    assert record["reason"].startswith("the target's default onnx2tf converts the float32 model wrongly")


@pytest.mark.slow
def test_an_accepted_conversion_error_and_the_repairs_are_in_report_and_manifest(tmp_path: Path):
    np.savez(tmp_path / "calib.npz", x=samples(48, 0))
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, [
        "build", "tests.routes.litert.test_fidelity:wrong_conversion_net", "--target", "android-arm64-int8",
        "--calibration", str(tmp_path / "calib.npz"), "--out", str(out), "--emulator", "host",
        "--accept-conversion-error"])
    assert result.exit_code in (0, 3), result.output
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    divergence = report["conversion"]["first_divergence"]
    assert divergence["onnx_node"] == "node_mul" and divergence["op_type"] == "Mul"
    assert divergence["module"] == "scale" and divergence["max_rel_err"] > 0.1
    [repair] = report["conversion"]["repairs"]
    assert repair["name"] == "maxpool-pads-as-edge-pad" and repair["nodes"] == ["node_max_pool2d"]
    assert any(w.startswith("repaired before conversion: maxpool-pads-as-edge-pad") for w in report["warnings"])
    [accepted] = [w for w in report["warnings"] if "first diverging ONNX node node_mul" in w]
    # the output and its SQNR (float32 device vs ONNX on the check's samples), far below exact
    found = re.search(r"\(accepted: --accept-conversion-error, output SQNR (-?\d+\.\d) dB\)$", accepted)
    assert found and float(found.group(1)) < 40
    assert json.loads((out / "manifest.json").read_text())["device"]["repairs"] == [repair]
    assert "first diverging ONNX node node_mul" in result.output and "conversion" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("target", ["android-arm64-fp32", "android-arm64-fp16", "jetson-orin-int8",
                                    "jetson-orin-fp16"])
def test_every_target_reports_conversion_and_quantization_error_apart(target, digits, tmp_path: Path):
    model, data = digits
    result = edgekit.build(model, target, calibration=data["x_calib"], eval_data=(data["x_eval"], data["y_eval"]),
                           out=tmp_path / "b", options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")))
    report, lines = result.report, summary_lines(result.report)
    assert report["conversion"]["outputs"][0]["sqnr_db"] > 80  # converter error: float device model vs PyTorch
    assert report["conversion"]["repairs"] == [] and report["conversion"]["first_divergence"] is None
    assert any(line.startswith("conversion") for line in lines)
    assert any(line.startswith("total drift") for line in lines)
    quantized = target != "android-arm64-fp32"
    assert (report["quantization"] is not None) == quantized
    assert any(line.startswith("quantization") for line in lines) == quantized



def _pad_model(path: Path) -> Path:
    import onnx

    node = helper.make_node("Pad", ["x", "p"], ["y"], name="node_pad", mode="wrap")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor("p", TensorProto.INT64, [4], [0, 1, 0, 1])])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_an_onnx2tf_failure_names_the_node_its_op_and_the_exception(tmp_path: Path):
    from edgekit.routes.litert.onnx2tf import _conversion_failure

    log = tmp_path / "onnx2tf.log"
    log.write_text('  File "x.py", line 1\nValueError: Exception encountered when calling layer "tf.pad".\n'
                   "\x1b[31mERROR:\x1b[0m onnx_op_name: node_pad\n")
    error = _conversion_failure(log, 1, _pad_model(tmp_path / "m.onnx"))
    assert isinstance(error, edgekit.errors.UnsupportedError) and error.exit_code == 2
    assert error.message == ('onnx2tf cannot convert ONNX node node_pad (Pad): ValueError: Exception encountered '
                             'when calling layer "tf.pad".')


def test_an_onnx2tf_crash_says_where_and_names_recurrent_ops(tmp_path: Path):
    from edgekit.routes.litert.onnx2tf import _conversion_failure

    (tmp_path / "tflite").mkdir()
    (tmp_path / "tflite" / "m_float32.tflite").write_bytes(b"")
    (tmp_path / "onnx2tf.log").write_text("Ignored output_format.\n")
    error = _conversion_failure(tmp_path / "onnx2tf.log", -11, _pad_model(tmp_path / "m.onnx"))
    assert error.message == "onnx2tf crashed (SIGSEGV) while quantizing to INT8 (the float32 model was written)"
    assert "android-arm64-fp32" in error.hint
