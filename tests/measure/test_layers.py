"""Per-layer drift: INT8 activations of the real device model, named by PyTorch module, culprit first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.measure.layers import local_sqnr_db
from tests.helpers import int8_breaking_copy


def test_local_sqnr_averages_channels_so_one_huge_channel_cannot_hide_the_others():
    rng = np.random.default_rng(0)
    values = rng.random((64, 4, 4, 8)).astype(np.float32)
    fitted = local_sqnr_db(values, scale=1 / 127, zero_point=0, dtype="int8")
    values[..., 0] *= 1000
    swamped = local_sqnr_db(values, scale=values.max() / 127, zero_point=0, dtype="int8")
    assert fitted > 35 and swamped < 10


def test_int8_bundle_lists_layers_worst_first_with_module_names(int8_bundle):
    layers = int8_bundle.report["layers"]
    assert len(layers) >= 5
    assert [r["sqnr_db"] for r in layers] == sorted(r["sqnr_db"] for r in layers)
    modules = {r["module"] for r in layers}
    assert {"features.1", "features.4", "classifier.1", "classifier.3"} <= modules
    assert all(r["sqnr_db"] > 30 for r in layers)  # a healthy model: every range fits


@pytest.mark.slow
@pytest.mark.parametrize("target", ["android-arm64-int8", "jetson-orin-int8"])
def test_the_culprit_of_a_broken_model_is_named_first(target, digits, tmp_path: Path):
    model, data = digits
    result = edgekit.build(int8_breaking_copy(model), target, calibration=(data["x_calib"], data["y_calib"]),
                           eval_data=(data["x_eval"], data["y_eval"]), out=tmp_path / "b",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                        conversion=edgekit.Conversion(equalize="off")))
    first, second = result.report["layers"][:2]
    assert first["module"] == "features.1" and first["modules"] == ["features.1", "features.2"]
    assert first["sqnr_db"] < 10 < 30 < second["sqnr_db"]
    assert first["accumulated_sqnr_db"] > 30  # the damage shows downstream, which is why local SQNR ranks
    assert not result.passed


def test_per_layer_samples_shrink_with_the_activation_size(digits, int8_bundle, monkeypatch, tmp_path: Path):
    """Every activation of the float and the device model is kept for each sample: the count is bounded by
    LAYER_BUDGET_BYTES (at least 2), and a build says when it measured on fewer samples."""
    import edgekit.measure.layers as layers

    reference = int8_bundle.out / "reference.onnx"
    per_sample = layers.activation_bytes(reference)
    assert 10_000 < per_sample < 100_000  # the digits CNN: a few feature maps of 8x8
    assert layers.layer_samples(reference, 32) == 32
    monkeypatch.setattr(layers, "LAYER_BUDGET_BYTES", 2 * per_sample * 6)
    assert layers.layer_samples(reference, 32) == 6
    monkeypatch.setattr(layers, "LAYER_BUDGET_BYTES", 1)
    assert layers.layer_samples(reference, 32) == 2 and layers.layer_samples(reference, 1) == 1
    model, data = digits
    result = edgekit.build(model, "onnxruntime-arm64-int8", calibration=(data["x_calib"], data["y_calib"]),
                           eval_data=(data["x_eval"], data["y_eval"]), out=tmp_path / "b",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")))
    assert result.report["layers"] and any(w.startswith("per-layer drift on 2 samples: the model's activations take")
                                           for w in result.report["warnings"])


def test_tensors_stacked_on_another_axis_are_not_matched_by_mistake():
    """A ViT's (3, 1, heads, tokens, dim) q/k/v stack concatenates to 3x the samples on axis 0; a TFLite tensor of
    the same per-sample shape but 1x must not be compared with it (it crashed the deit_tiny build)."""
    from edgekit.measure.layers import match_to_onnx

    rng = np.random.default_rng(0)
    device = rng.random((4, 1, 3, 5, 2)).astype(np.float32)
    onnx_values = {"qkv": rng.random((12, 1, 3, 5, 2)).astype(np.float32), "same": device.copy()}
    assert match_to_onnx([{"name": "t", "values": device}], onnx_values) == {"t": "same"}
    assert match_to_onnx([{"name": "t", "values": device}], {"qkv": onnx_values["qkv"]}) == {}
