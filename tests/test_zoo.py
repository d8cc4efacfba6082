"""Zoo architectures (benchmarks/zoo/architectures.py, random weights) through the real runtimes: every float32
device model exact within rounding, every INT8 one built and measured. The full table is `make zoo` (docs/zoo.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import edgekit
from benchmarks.zoo.architectures import get

MISSING = [name for name in ("torchvision", "timm") if importlib.util.find_spec(name) is None]
pytestmark = [pytest.mark.zoo, pytest.mark.skipif(bool(MISSING), reason=f"the zoo needs {' and '.join(MISSING)} "
                                                                        "(requirements.lock: make venv installs them)")]
EXACT_DB = 80.0  # relative error 1e-4: the conversion criterion


def _data(name: str) -> tuple[dict, dict]:
    """32 calibration and 16 eval samples; the image model at 96x96 (fully convolutional) to keep the suite fast."""
    arch = get(name)
    if name == "mobilenet_v3_small":
        rng = np.random.default_rng(0)
        return ({"x": rng.standard_normal((32, 3, 96, 96), dtype=np.float32)},
                {"x": rng.standard_normal((16, 3, 96, 96), dtype=np.float32)})
    return {"x": arch.samples(32, 0)[arch.inputs[0].name]}, {"x": arch.samples(16, 1)[arch.inputs[0].name]}


@pytest.fixture(scope="module")
def zoo_models() -> dict:
    return {name: get(name).build() for name in ("mobilenet_v3_small", "tcn_1d")}


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "tcn_1d"])
@pytest.mark.parametrize("route", ["onnxruntime-arm64", "openvino-x86", "android-arm64-executorch"])
def test_new_routes_convert_zoo_models_exactly_and_quantize_them(route, name, zoo_models, tmp_path: Path):
    calibration, evaluation = _data(name)
    built = {}
    for precision in ("fp32", "int8"):
        built[precision] = edgekit.build(zoo_models[name], f"{route}-{precision}", calibration, evaluation,
                                         tmp_path / precision,
                                         options=edgekit.BuildOptions(
                                             verify=edgekit.Verify(emulator="host"),
                                             gate=edgekit.Gate(max_drop=100.0, min_agreement=0.0)))
    fp32, int8 = built["fp32"].report, built["int8"].report
    assert min(o["sqnr_db"] for o in fp32["drift"]["outputs"]) > EXACT_DB  # the float device model is the model
    assert min(o["sqnr_db"] for o in int8["conversion"]["outputs"]) > EXACT_DB
    # random weights and inputs: INT8 measured 21-38 dB here; a collapsed INT8 model would be near 0
    assert min(o["sqnr_db"] for o in int8["quantization"]["outputs"]) > 15.0
    assert int8["size"]["device_bytes"] < 0.5 * fp32["size"]["device_bytes"]
    assert int8["quantization"]["equalization"]["mode"] == "auto"  # measured, applied only where better


# one or more of every family; image models at the smallest size their definition keeps exact (fully convolutional
# ones shrink, the ViT keeps its 224 patch grid); with mobilenet_v3_small, tcn_1d and bert_tiny above: 11
SUBSET = {"resnet18": 96, "efficientnet_b0": 96, "deit_tiny": None, "yolo_style_dfl": 160,
          "lraspp_mobilenet_v3": 128, "kws_lstm": None, "speech_gru": None, "conformer_block": None}


def _shrunk(name: str, size: int | None, count: int, seed: int) -> dict[str, np.ndarray]:
    arch = get(name)
    if size is None:
        samples = arch.samples(count, seed)
        return {"x": samples[arch.inputs[0].name]} if len(arch.inputs) == 1 else samples
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((count, 3, size, size), dtype=np.float32)}


@pytest.mark.parametrize("name", list(SUBSET))
def test_zoo_float32_builds_ship_only_exact_conversions(name, tmp_path: Path):
    """Through litert-torch (android-arm64-fp32) the device model computes what PyTorch computes, within rounding;
    edgekit refuses (exit 2) a conversion beyond rounding unless --accept-conversion-error, so no warning of an
    accepted error may appear either."""
    arch = get(name)
    try:
        result = edgekit.build(arch.build(), "android-arm64-fp32", _shrunk(name, SUBSET[name], 8, 0),
                               _shrunk(name, SUBSET[name], 8, 1), tmp_path / name,
                               options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                            conversion=edgekit.Conversion(converter="litert-torch"),
                                                            gate=edgekit.Gate(max_drop=100.0, min_agreement=0.0)))
    except edgekit.UnsupportedError as refused:  # names the op and module (tests/routes/litert/test_fidelity.py)
        pytest.fail(f"{name}: float32 conversion refused, though docs/zoo.md measured it exact: {refused.message}")
    report = result.report
    assert report["runtime"]["converter"] == "litert-torch"
    assert not any("accepted" in w for w in report["warnings"])
    assert min(o["sqnr_db"] for o in report["conversion"]["outputs"]) > EXACT_DB
    assert min(o["sqnr_db"] for o in report["drift"]["outputs"]) > EXACT_DB  # device vs PyTorch, end to end


def test_integer_inputs_pass_through_unquantized(tmp_path: Path):
    """bert_tiny: int64 token ids and an attention mask. Calibrated and measured with their own dtype, listed as
    int64 in the device I/O signature, and check.py feeds them as int64."""
    import json
    import subprocess
    import sys

    arch = get("bert_tiny")
    result = edgekit.build(arch.build(), "onnxruntime-arm64-int8", arch.samples(32, 0), arch.samples(16, 1),
                           tmp_path / "bert",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                        gate=edgekit.Gate(max_drop=100.0, min_agreement=0.0)))
    report = result.report
    assert min(o["sqnr_db"] for o in report["conversion"]["outputs"]) > EXACT_DB
    assert min(o["sqnr_db"] for o in report["quantization"]["outputs"]) > 15.0
    signature = result.manifest["device"]["signature"]["inputs"]
    assert [(s["name"], s["dtype"], s["device_dtype"]) for s in signature] == [
        ("input_ids", "int64", "int64"), ("attention_mask", "int64", "int64")]
    with np.load(tmp_path / "bert" / "golden" / "inputs.npz") as golden:
        assert golden["input_ids"].dtype == np.int64
    done = subprocess.run([sys.executable, "check.py", "--json"], cwd=tmp_path / "bert", capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["passed"] is True


def test_integer_inputs_on_android_int8_go_through_litert_torch(tmp_path: Path):
    """onnx2tf (the target's default) cannot calibrate integer inputs: without --converter the build gives way to
    litert-torch and says why; with --converter onnx2tf it is refused up front (exit 2)."""
    arch = get("bert_tiny")
    model, calibration, evaluation = arch.build(), arch.samples(32, 0), arch.samples(16, 1)
    result = edgekit.build(model, "android-arm64-int8", calibration, evaluation, tmp_path / "bert",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                        gate=edgekit.Gate(max_drop=100.0, min_agreement=0.0)))
    report = result.report
    assert report["runtime"]["converter"] == "litert-torch"
    assert any(w.startswith("converter: onnx2tf, the target's default, cannot build this model (onnx2tf's INT8 "
                            "calibration feeds float32 to every input") for w in report["warnings"])
    assert min(o["sqnr_db"] for o in report["conversion"]["outputs"]) > EXACT_DB
    assert min(o["sqnr_db"] for o in report["quantization"]["outputs"]) > 15.0
    with pytest.raises(edgekit.UnsupportedError, match=r"this model has integer inputs: input_ids \(int64\), "
                                                       r"attention_mask \(int64\)") as info:
        edgekit.build(model, "android-arm64-int8", calibration, evaluation, tmp_path / "o",
                      options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                   conversion=edgekit.Conversion(converter="onnx2tf")))
    assert info.value.exit_code == 2 and not (tmp_path / "o").exists()


def test_auto_on_the_audio_cnn_ships_the_more_faithful_int8_model(zoo_models, tmp_path: Path):
    """tcn_1d: both float32 conversions are exact, litert-torch builds faster, but onnx2tf's INT8 model is the more
    faithful one (measured here 37.3 against 33.9 dB); auto compares what ships and picks it."""
    calibration, evaluation = _data("tcn_1d")
    result = edgekit.build(zoo_models["tcn_1d"], "android-arm64-int8", calibration, evaluation, tmp_path / "auto",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                        conversion=edgekit.Conversion(converter="auto"),
                                                        gate=edgekit.Gate(max_drop=100.0, min_agreement=0.0)))
    record = result.manifest["device"]["converter"]
    by_name = {c["name"]: c for c in record["candidates"]}
    assert all(c["float_sqnr_db"] > EXACT_DB for c in by_name.values())
    best = max(by_name.values(), key=lambda c: c["shipped_sqnr_db"])
    other = min(by_name.values(), key=lambda c: c["shipped_sqnr_db"])
    assert best["shipped_sqnr_db"] - other["shipped_sqnr_db"] > 1.0
    assert record["name"] == best["name"] and "shipped model is more faithful" in record["reason"]
    worst_output = min(o["sqnr_db"] for o in result.report["drift"]["outputs"])
    assert abs(worst_output - best["shipped_sqnr_db"]) < 0.01  # the report measures the model that was chosen
