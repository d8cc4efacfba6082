"""Empirical bias correction (edgekit/routes/litert/bias_correction.py) on a model whose INT8 error is mostly a shift:
the digits pasted on flat 24x24 canvases, where the background's rounding error repeats at most positions and a
global average pool adds it up. Both Android converters, through the real quantizers and LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgekit
from tests.conftest import read_report


def _canvas_net() -> torch.nn.Module:
    """Random convs with biases far from zero: the flat background lands between INT8 steps in every channel
    (measured: output SQNR 44.2 -> 48.0 dB on the calibration canvases, 44.4 -> 47.7 dB on the eval ones)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.SiLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.SiLU(),
        torch.nn.Conv2d(32, 32, 3, stride=2, padding=1), torch.nn.SiLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, torch.nn.Conv2d):
                layer.bias.uniform_(-2.0, 2.0)
    return net.eval()


def _canvases(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.full((len(x), 1, 24, 24), float(x.min()), np.float32)
    for i, (dy, dx) in enumerate(rng.integers(0, 17, (len(x), 2))):
        out[i, :, dy:dy + 8, dx:dx + 8] = x[i, :1]
    return out


@pytest.fixture(scope="module")
def canvas(digits):
    _, data = digits
    return _canvas_net(), (_canvases(data["x_calib"], 0), data["y_calib"]), (_canvases(data["x_eval"], 1),
                                                                              data["y_eval"])


@pytest.mark.slow
@pytest.mark.parametrize("converter", ["onnx2tf", "litert-torch"])
def test_bias_correction_takes_the_shift_out_of_every_weighted_layer(converter, canvas, tmp_path: Path):
    model, calibration, evaluation = canvas
    built = {mode: edgekit.build(model, "android-arm64-int8", calibration=calibration, eval_data=evaluation,
                                 out=tmp_path / mode,
                                 options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                              conversion=edgekit.Conversion(converter=converter,
                                                                                            equalize=mode),
                                                              outputs=edgekit.Outputs(task="regress"),
                                                              gate=edgekit.Gate(max_drop=100.0, min_agreement=0.0)))
             for mode in ("off", "on", "auto")}
    off, on, auto = (built[m].report for m in ("off", "on", "auto"))
    assert off["quantization"]["bias_correction"] is None
    block = on["quantization"]["bias_correction"]
    assert block["mode"] == "on" and block["applied"] and len(block["layers"]) == 4  # three convs and the linear
    assert block["sqnr_db"]["after"] >= block["sqnr_db"]["before"] + 2.0, block
    sqnr = {m: built[m].report["drift"]["outputs"][0]["sqnr_db"] for m in built}
    assert sqnr["on"] >= sqnr["off"] + 2.0, sqnr  # measured on the eval canvases, which the correction never saw
    assert auto["quantization"]["bias_correction"]["applied"] and sqnr["auto"] == sqnr["on"]
    # the same ops, scales and sizes: only bias values moved
    assert abs(on["size"]["device_bytes"] - off["size"]["device_bytes"]) <= 1024
    assert read_report(tmp_path / "on") == on


@pytest.mark.slow
def test_an_unrolled_lstm_is_corrected_a_layer_at_a_time_not_a_step_at_a_time(tmp_path: Path):
    """litert-torch unrolls a 3-layer LSTM over its frames: 3 x 20 + 1 FULLY_CONNECTED ops reading 7 weight tensors.
    Bias correction measures level by level and shares one shift between the steps of a layer: a handful of
    interpreter runs instead of one per op (the old way repacked and re-ran the whole model 61 times; at 160 frames
    that was over 20 minutes, benchmarks/bench_bias.py)."""
    from benchmarks.zoo.architectures import speaker_lstm

    frames = 20
    model = speaker_lstm(hidden=32)
    rng = np.random.default_rng(0)
    calibration, evaluation = (rng.standard_normal((n, frames, 40), dtype=np.float32) for n in (32, 16))
    result = edgekit.build(model, "android-arm64-int8", calibration=calibration, eval_data=evaluation,
                           out=tmp_path / "b", options=edgekit.BuildOptions(
                               verify=edgekit.Verify(emulator="host"),
                               conversion=edgekit.Conversion(converter="litert-torch", equalize="on"),
                               outputs=edgekit.Outputs(task="embed"),
                               gate=edgekit.Gate(max_drop=100.0, min_agreement=0.0, min_sqnr=0.0)))
    block = result.report["quantization"]["bias_correction"]
    assert block["applied"] and len(block["layers"]) == 3 * frames + 1  # every step of every layer
    assert block["levels"] <= 8 and block["stopped"] is None
    assert result.report["timings_s"]["bias_correction"] == block["seconds"]
    assert block["seconds"] < result.report["timings_s"]["convert"]  # a part of it
