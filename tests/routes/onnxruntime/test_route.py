"""The ONNX Runtime route (edgekit/routes/onnxruntime/route.py): QDQ INT8 shipped as an ORT-format model for ONNX
Runtime Mobile, measured on the .ort itself in onnxruntime; check.py runs it with onnxruntime alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import edgekit
from edgekit.config.options import options_from_keywords
from edgekit.errors import UnsupportedError
from tests.helpers import int8_breaking_copy


def _build(model, data, target: str, out: Path, **options) -> edgekit.BuildResult:
    return edgekit.build(model, target, calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out, options=options_from_keywords(**options))


@pytest.fixture(scope="module")
def ort_int8(digits, tmp_path_factory) -> edgekit.BuildResult:
    model, data = digits
    return _build(model, data, "onnxruntime-arm64-int8", tmp_path_factory.mktemp("ort") / "int8")


def test_int8_keeps_the_digits_accuracy_and_ships_an_ort_model(ort_int8):
    report, out = ort_int8.report, ort_int8.out
    assert ort_int8.passed and report["drift"]["top1_agreement"] >= 0.99 and report["drift"]["accuracy_drop"] <= 0.5
    assert report["quantization"]["outputs"][0]["sqnr_db"] > 30  # INT8 rounding, not a broken model
    assert report["runtime"]["name"] == "onnxruntime" and report["layers"]  # per-layer drift from the QDQ model
    assert {"model.ort", "model.onnx", "model.required_operators.config", "check.py"} <= {p.name for p in out.iterdir()}
    assert (out / "model.ort").read_bytes()[4:8] == b"ORTM"  # the ORT format's flatbuffer identifier
    graph = onnx.load(str(out / "model.onnx")).graph
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")]
    assert weights and all(len(n.input) == 3 for n in weights)  # per-channel weights with their scales
    config = (out / "model.required_operators.config").read_text()
    assert "# - model.ort" in config and "QuantizeLinear" in config and "/tmp" not in config
    assert report["size"]["device_bytes"] < 0.45 * report["size"]["float_device_bytes"]


def test_check_py_runs_the_ort_model_with_onnxruntime_alone(ort_int8):
    done = subprocess.run([sys.executable, "check.py", "--json"], cwd=ort_int8.out, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["runtime"].startswith("onnxruntime") and result["outputs"][0]["max_abs_err_vs_golden"] == 0.0


def test_fp32_is_exact_within_rounding(digits, tmp_path: Path):
    model, data = digits
    result = _build(model, data, "onnxruntime-arm64-fp32", tmp_path / "fp32")
    assert result.passed and result.report["conversion"]["outputs"][0]["sqnr_db"] > 80
    assert result.report["drift"]["top1_agreement"] == 1.0 and result.report["quantization"] is None


@pytest.mark.slow
def test_fallback_keeps_the_culprit_in_float_and_passes(digits, tmp_path: Path):
    model, data = digits
    broken = int8_breaking_copy(model)
    failed = _build(broken, data, "onnxruntime-arm64-int8", tmp_path / "minmax", max_drop=1.0, equalize="off")
    assert not failed.passed and failed.report["layers"][0]["module"] == "features.1"
    fixed = _build(broken, data, "onnxruntime-arm64-int8", tmp_path / "auto", max_drop=1.0, fallback="auto",
                   equalize="off")
    assert fixed.passed and fixed.report["drift"]["accuracy_drop"] <= 1.0
    assert "features.1" in fixed.report["quantization"]["float_modules"]


def test_calibration_methods_the_route_lacks_are_refused(digits, tmp_path: Path):
    model, data = digits
    with pytest.raises(UnsupportedError, match="--calibration-method mse is not available on route onnxruntime"):
        _build(model, data, "onnxruntime-arm64-int8", tmp_path / "mse", calibration_method="mse")
    assert not (tmp_path / "mse").exists()


@pytest.mark.emulator
def test_int8_in_the_arm64_emulator_is_bit_exact_with_the_host(digits, emulator_root, tmp_path: Path):
    """onnxruntime's aarch64 build runs the .ort in the emulator; its golden check passes there too. On an x86 host
    without VNNI the host computes the Q/DQ model as written (docs/routes.md): the same classes, an output step
    apart at most (0.13 measured), not bit for bit."""
    from edgekit.bundle.check import check_bundle_dir
    from edgekit.standalone.check import saturating_host

    model, data = digits
    result = _build(model, data, "onnxruntime-arm64-int8", tmp_path / "arm64", emulator="arm64",
                    emulator_samples=32)
    block = result.report["emulator"]
    assert block["where"] == "qemu-aarch64 cortex-a76" and block["samples"] == 32 and block["error"] is None
    as_written = saturating_host()
    assert block["passed"] and block["top1_agreement"] == 1.0
    assert block["bit_exact_with_host"] or (as_written and max(block["max_abs_diff_vs_host"].values()) < 0.2)
    checked = check_bundle_dir(result.out, emulator="arm64")
    assert checked["passed"] and checked["runtime"] == "onnxruntime (emulated)"
    assert checked["outputs"][0]["max_abs_err_vs_golden"] == 0.0 or as_written


def test_int8_weights_dequantize_each_output_channel_and_compute_in_float(tmp_path: Path):
    """The back-off's form, on the layouts a weight comes in: MatMul (K, N), Gemm without transB (K, N), with transB
    (N, K). Each weight becomes INT8 behind a DequantizeLinear on its output-channel axis; the rest of the graph
    stays float, and onnxruntime (and its ORT-format converter) keeps the INT8 constants."""
    import numpy as np
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.routes.onnxruntime.route import int8_weights, to_ort

    rng = np.random.default_rng(0)
    w = {"a": rng.standard_normal((256, 192)), "b": rng.standard_normal((192, 160)) * np.resize([1, 10, 0.1], 160),
         "c": rng.standard_normal((128, 160))}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "a"], ["h"], name="mm"),
         helper.make_node("Gemm", ["h", "b"], ["g"], name="gemm"),
         helper.make_node("Gemm", ["g", "c"], ["y"], name="gemm_t", transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 128])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    x = rng.standard_normal((3, 256)).astype(np.float32)
    before = onnxruntime.InferenceSession(str(path)).run(None, {"x": x})[0]
    int8_weights(path, ["mm", "gemm", "gemm_t"])
    model = onnx.load(str(path))
    axes = {n.output[0]: n.attribute[0].i for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert axes == {"a": 1, "b": 1, "c": 0}
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert {stored[f"{k}_int8"].dtype for k in w} == {np.dtype(np.int8)} and not set(w) & set(stored)
    assert stored["b_int8_scale"][2] < stored["b_int8_scale"][1] / 50  # per column: 0.1x beside 10x
    after = onnxruntime.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert 10 * np.log10((before**2).sum() / ((before - after) ** 2).sum()) > 30.0  # INT8 weights' rounding only
    ort = to_ort(path, tmp_path / "ort")["model.ort"]
    assert ort.stat().st_size < 1.1 * sum(v.size for v in w.values())  # not folded back into float32 constants
    assert np.allclose(onnxruntime.InferenceSession(str(ort)).run(None, {"x": x})[0], after, atol=1e-5)
