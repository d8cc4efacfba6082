"""The litert-torch route (PyTorch -> TFLite without ONNX), edgekit's own INT8 ranges, and `--converter auto`,
with real litert-torch, ai-edge-quantizer, onnx2tf and LiteRT runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import edgekit
from edgekit.bundle.report import report_schema
from edgekit.config.options import options_from_keywords
from edgekit.errors import UnsupportedError
from edgekit.routes.litert.choose import Candidate, choose

pytest.importorskip("litert_torch")
ROOT = Path(__file__).resolve().parents[3]


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return interpreter


@pytest.fixture(scope="module")
def digits_tflite(digits, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The digits CNN converted by litert-torch to float32, and its calibration set as signature inputs."""
    import torch

    from edgekit.routes.litert.litert_torch import convert_float

    model, data = digits
    path, _ = convert_float(model, (torch.from_numpy(data["x_calib"][:1]),),
                            tmp_path_factory.mktemp("lt") / "digits_float32.tflite")
    return path, [{"args_0": data["x_calib"][i:i + 1]} for i in range(len(data["x_calib"]))]


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    interpreter = _interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for k in range(len(x)):
        interpreter.set_tensor(inp["index"], x[k:k + 1])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(rows)


def test_minmax_ranges_are_global_not_the_librarys_moving_average(digits_tflite, digits):
    from ai_edge_quantizer import quantizer, recipe

    from edgekit.routes.litert.quantize import collect_ranges

    path, samples = digits_tflite
    ranges = collect_ranges(path, samples, "minmax")
    outputs = _run(path, digits[1]["x_calib"])
    [name] = [n for n in ranges if n.endswith("output_0_output")]
    assert ranges[name]["min"].item() == pytest.approx(outputs.min(), rel=1e-6)
    assert ranges[name]["max"].item() == pytest.approx(outputs.max(), rel=1e-6)
    library = quantizer.Quantizer(str(path), recipe.static_wi8_ai8()).calibrate({"serving_default": samples[:50]})
    assert library[name]["max"].item() < 0.9 * ranges[name]["max"].item()  # the trap this module avoids


def _int8_scales(path: Path) -> dict[str, float]:
    return {t["name"]: float(t["quantization"][0]) for t in _interpreter(path).get_tensor_details()
            if np.dtype(t["dtype"]) == np.int8 and t["quantization"][0]}


def _expected_scale(qsv: dict) -> float:
    return (max(qsv["max"].item(), 0.0) - min(qsv["min"].item(), 0.0)) / 255.0


def test_activation_scales_follow_the_ranges_and_methods_differ(digits_tflite, tmp_path: Path):
    from edgekit.routes.litert.quantize import collect_ranges, quantize_tflite

    path, samples = digits_tflite
    scales = {}
    for method in ("minmax", "percentile"):
        ranges = collect_ranges(path, samples, method, 99.9)
        model = _int8_scales(quantize_tflite(path, ranges, tmp_path / f"{method}.tflite"))
        checked = {n: model[n] for n in ranges if n in model}
        assert len(checked) >= 6
        for name, scale in checked.items():
            assert scale == pytest.approx(_expected_scale(ranges[name]), rel=1e-5), name
        scales[method] = checked
    narrower = [n for n in scales["minmax"] if scales["percentile"][n] < 0.95 * scales["minmax"][n]]
    assert narrower, "percentile ranges should clip some activation of the digits CNN"


def test_float_io_by_default_and_int8_io_when_asked(digits_tflite, digits, tmp_path: Path):
    from edgekit.routes.litert.quantize import collect_ranges, quantize_tflite

    path, samples = digits_tflite
    ranges = collect_ranges(path, samples[:64], "mse")
    floats = quantize_tflite(path, ranges, tmp_path / "f.tflite")
    ints = quantize_tflite(path, ranges, tmp_path / "i.tflite", io="int8")
    io_types = [np.dtype(d["dtype"]).name for d in _interpreter(floats).get_input_details()
                + _interpreter(floats).get_output_details()]
    assert io_types == ["float32", "float32"]
    assert np.dtype(_interpreter(ints).get_input_details()[0]["dtype"]) == np.int8
    x = digits[1]["x_eval"][:64]
    reference, device = _run(path, x), _run(floats, x)
    assert np.mean(reference.argmax(1) == device.argmax(1)) >= 0.98


def test_float_ops_stay_float(digits_tflite, tmp_path: Path):
    from edgekit.routes.litert.quantize import collect_ranges, quantize_tflite

    path, samples = digits_tflite
    model = quantize_tflite(path, collect_ranges(path, samples[:32]), tmp_path / "m.tflite",
                            float_ops=("FULLY_CONNECTED",))
    interpreter = _interpreter(model)
    types = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    assert ops and all(types[op["outputs"][0]] == "float32" for op in ops)


def test_mse_clips_a_heavy_tail_and_keeps_a_uniform_range():
    from edgekit.routes.calibrate import mse_range

    edges = np.linspace(-100, 100, 2049)
    centres = (edges[:-1] + edges[1:]) / 2
    tail = np.where(np.abs(centres) < 5, 10_000, 0) + (np.abs(centres) > 99.8)
    low, high = mse_range(tail, edges, -100, 100)
    assert high < 50 and low > -50
    assert mse_range(np.ones(2048), edges, -100, 100) == pytest.approx((-100, 100))


def _candidate(name: str, sqnr: float | None, seconds: float, error: str | None = None,
               shipped: float | None = None) -> Candidate:
    return Candidate(name, device=None if error else object(), version="1", seconds=seconds, float_sqnr_db=sqnr,
                     error=error, shipped_sqnr_db=shipped)


def test_choose_on_a_quantized_target_compares_what_ships():
    """Both float32 models exact: the faster converter's INT8 model is 2 dB worse, so the other one ships."""
    chosen, reason, warnings = choose([_candidate("onnx2tf", 128.0, 20.0, shipped=33.9),
                                       _candidate("litert-torch", 131.0, 3.0, shipped=31.9)])
    assert chosen.name == "onnx2tf" and not warnings
    assert reason.endswith("onnx2tf's shipped model is more faithful (shipped model SQNR vs PyTorch: onnx2tf "
                           "33.9 dB, litert-torch 31.9 dB)")
    chosen, reason, _ = choose([_candidate("onnx2tf", 128.0, 20.0, shipped=33.9),
                                _candidate("litert-torch", 131.0, 3.0, shipped=33.2)])
    assert chosen.name == "litert-torch" and "built faster" in reason  # within 1 dB: the faster
    chosen, _, _ = choose([_candidate("onnx2tf", 16.9, 20.0, shipped=40.0),
                           _candidate("litert-torch", 131.0, 3.0, shipped=30.0)])
    assert chosen.name == "litert-torch"  # a float32 model wrong beyond rounding never wins on its INT8 number


def test_choose_prefers_the_faithful_converter_and_on_a_tie_the_faster():
    chosen, reason, warnings = choose([_candidate("onnx2tf", 16.9, 12.0), _candidate("litert-torch", 140.2, 3.0)])
    assert chosen.name == "litert-torch" and "more faithful" in reason
    assert warnings == ["converters disagree beyond rounding: onnx2tf's float32 model drifts from PyTorch "
                        "(float32 SQNR vs PyTorch: litert-torch 140.2 dB, onnx2tf 16.9 dB); built with litert-torch"]
    chosen, reason, warnings = choose([_candidate("onnx2tf", 128.0, 2.0), _candidate("litert-torch", 131.0, 3.0)])
    assert chosen.name == "onnx2tf" and "within rounding" in reason and "built faster" in reason and not warnings
    missing = _candidate("litert-torch", None, 0.0, "converter litert-torch is not installed")
    chosen, reason, warnings = choose([_candidate("onnx2tf", 120.0, 12.0), missing])
    assert chosen.name == "onnx2tf" and "only onnx2tf" in reason
    assert warnings == ["converter auto: litert-torch could not be used: converter litert-torch is not installed; "
                        "built with onnx2tf"]


def _build(digits, target: str, out: Path, **kwargs) -> edgekit.BuildResult:
    model, data = digits
    return edgekit.build(model, target, calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out,
                         options=options_from_keywords(emulator="host", **kwargs))


def _check_py(bundle: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "check.py"], cwd=bundle, capture_output=True, text=True, timeout=120)


def _assert_bundle_passes(result: edgekit.BuildResult) -> dict:
    report = json.loads((result.out / "report.json").read_text())
    jsonschema.validate(report, report_schema())
    drift = report["drift"]
    assert drift["top1_agreement"] >= 0.99 and drift["accuracy_drop"] <= 0.5 and result.passed
    assert report["runtime"]["converter"] == "litert-torch" and report["runtime"]["converter_version"] == "0.10.0"
    assert report["conversion"]["outputs"][0]["sqnr_db"] > 80
    done = _check_py(result.out)
    assert done.returncode == 0 and "PASSED" in done.stdout, done.stdout + done.stderr
    return report


def test_litert_torch_int8_bundle_is_at_least_as_good_as_onnx2tf(digits, int8_bundle, tmp_path: Path):
    result = _build(digits, "android-arm64-int8", tmp_path / "lt-int8", converter="litert-torch")
    report = _assert_bundle_passes(result)
    ours, theirs = report["drift"], int8_bundle.report["drift"]
    # same global min/max ranges and kernels: on the digits CNN both routes land on the same INT8 numbers (38.52 dB
    # each on the machine this was written on). Each route measures its ranges in its own float runtime (LiteRT,
    # TensorFlow), whose rounding differs between CPUs: allow for that (0.05 dB, one sample), far less than a
    # different choice of ranges costs
    one_sample = 1 / ours["samples"]
    assert ours["outputs"][0]["sqnr_db"] >= theirs["outputs"][0]["sqnr_db"] - 0.05
    assert ours["top1_agreement"] >= theirs["top1_agreement"] - one_sample - 1e-9
    assert ours["accuracy_drop"] <= theirs["accuracy_drop"] + 100 * one_sample + 1e-9
    assert report["size"]["device_bytes"] <= 0.35 * report["size"]["float_device_bytes"]
    manifest = json.loads((result.out / "manifest.json").read_text())
    [inp] = manifest["device"]["inputs"]
    assert inp["to_device"] is None and inp["device_name"] == "serving_default_args_0"  # NCHW, not transposed
    [signature] = manifest["device"]["signature"]["inputs"]
    assert signature["device_layout"] == "NCHW" and signature["device_dtype"] == "float32"
    assert manifest["device"]["converter"]["name"] == "litert-torch"
    assert manifest["versions"]["litert-torch"] == "0.10.0"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["android-arm64-fp32", "android-arm64-fp16"])
def test_litert_torch_float_bundles(target, digits, tmp_path: Path):
    report = _assert_bundle_passes(_build(digits, target, tmp_path / "b", converter="litert-torch"))
    if target.endswith("fp16"):
        assert report["size"]["device_bytes"] < 0.6 * report["size"]["float_device_bytes"]


@pytest.mark.slow
def test_int8_io_bundle_takes_int8(digits, tmp_path: Path):
    result = _build(digits, "android-arm64-int8", tmp_path / "io", converter="litert-torch", io="int8")
    manifest = json.loads((result.out / "manifest.json").read_text())
    signature = manifest["device"]["signature"]
    assert signature["inputs"][0]["device_dtype"] == "int8"
    for binding in (signature["inputs"][0], signature["outputs"][0]):  # what an app needs to read integers
        assert binding["device_dtype"] == "int8" and binding["scale"] > 0 and -128 <= binding["zero_point"] <= 127
    assert result.report["drift"]["top1_agreement"] >= 0.99
    assert _check_py(result.out).returncode == 0


def test_onnx_model_on_litert_torch_is_refused_with_exit_2(int8_bundle, digits, tmp_path: Path):
    _, data = digits
    with pytest.raises(UnsupportedError) as info:
        edgekit.build(int8_bundle.out / "reference.onnx", "android-arm64-fp32", calibration=data["x_calib"],
                      out=tmp_path / "x",
                      options=edgekit.BuildOptions(conversion=edgekit.Conversion(converter="litert-torch"),
                                                   verify=edgekit.Verify(emulator="host")))
    assert info.value.exit_code == 2 and "--converter onnx2tf" in info.value.hint
    assert not (tmp_path / "x").exists()


BLOCK_LITERT_TORCH = """
import sys

class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "litert_torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""


def _without_litert_torch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(textwrap.dedent(BLOCK_LITERT_TORCH))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", "build", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)


def test_missing_litert_torch_exits_2_naming_the_extra(digits_files, tmp_path: Path):
    done = _without_litert_torch(tmp_path, str(digits_files["pt2"]), "--target", "android-arm64-int8",
                                 "--calibration", str(digits_files["calib"]), "--converter", "litert-torch",
                                 "--out", str(tmp_path / "b"), "--emulator", "host")
    assert done.returncode == 2, done.stderr
    assert "litert-torch is not installed" in done.stderr and "edgekit[litert-torch]" in done.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_auto_without_litert_torch_builds_with_onnx2tf_and_says_why(digits_files, tmp_path: Path):
    done = _without_litert_torch(tmp_path, str(digits_files["pt2"]), "--target", "android-arm64-fp32",
                                 "--calibration", str(digits_files["calib"]), "--eval", str(digits_files["eval"]),
                                 "--converter", "auto", "--out", str(tmp_path / "b"), "--emulator", "host")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["runtime"]["converter"] == "onnx2tf"
    assert any("litert-torch" in w and "not installed" in w for w in report["warnings"])
    record = json.loads((tmp_path / "b" / "manifest.json").read_text())["device"]["converter"]
    assert record["requested"] == "auto" and record["name"] == "onnx2tf" and "only onnx2tf" in record["reason"]


def upsample_model():
    """Conv then bilinear upsampling with align_corners=True to an odd size: onnx2tf's float32 model of it is
    wrong, litert-torch's exact. With 9 channels on 9x9 edgekit's resize repair does not apply (onnx2tf guesses
    layouts wrongly where a channel count equals a spatial size), so onnx2tf's float32 check fails."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 9, 3, padding=1),
                         nn.Upsample(size=(13, 11), mode="bilinear", align_corners=True)).eval()


@pytest.mark.slow
def test_auto_picks_litert_torch_where_onnx2tf_converts_wrongly(tmp_path: Path):
    x = np.random.default_rng(0).standard_normal((60, 3, 9, 9)).astype(np.float32)
    result = edgekit.build(upsample_model(), "android-arm64-fp32", calibration=x[:40], eval_data=x[40:],
                           out=tmp_path / "b",
                           options=edgekit.BuildOptions(conversion=edgekit.Conversion(converter="auto"),
                                                        verify=edgekit.Verify(emulator="host")))
    assert result.report["runtime"]["converter"] == "litert-torch" and result.passed
    assert result.report["conversion"]["outputs"][0]["sqnr_db"] > 100
    [warning] = [w for w in result.report["warnings"] if "onnx2tf could not be used" in w]
    assert "first diverging ONNX node node_upsample_bilinear2d (Resize)" in warning  # its float32 check failed
    record = result.manifest["device"]["converter"]
    assert record["requested"] == "auto" and record["name"] == "litert-torch"
    assert "only litert-torch" in record["reason"]
    by_name = {c["name"]: c for c in record["candidates"]}
    assert "float32 conversion is wrong beyond rounding" in by_name["onnx2tf"]["error"]
    assert by_name["litert-torch"]["float_sqnr_db"] > 100


@pytest.mark.slow
def test_auto_on_a_model_both_convert_exactly_picks_either_and_records_why(digits, tmp_path: Path):
    result = _build(digits, "android-arm64-fp32", tmp_path / "b", converter="auto")
    record = result.manifest["device"]["converter"]
    assert record["name"] in ("onnx2tf", "litert-torch") and result.report["runtime"]["converter"] == record["name"]
    assert "within rounding" in record["reason"]
    assert all(c["float_sqnr_db"] > 80 for c in record["candidates"])
    assert not [w for w in result.report["warnings"] if "converter" in w]
