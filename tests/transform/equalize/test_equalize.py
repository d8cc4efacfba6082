"""Cross-layer equalization (edgekit/transform/equalize/torch.py): function-preserving, balanced ranges, and on the
outlier fixture (tests.helpers.int8_breaking_copy: one channel x1000, the next layer's input channel /1000) the repair
that makes every route's INT8 pass with no layer left in float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgekit
from edgekit.config.options import options_from_keywords
from edgekit.errors import UnsupportedError
from edgekit.inputs.model import LoadedModel
from edgekit.transform.equalize.torch import equalize, find_pairs
from tests.helpers import int8_breaking_copy

DIGITS_PAIRS = [{"first": "features.0", "second": "features.3", "norm": "features.1"},
                {"first": "classifier.1", "second": "classifier.3", "norm": None}]


@pytest.fixture(scope="module")
def broken(digits):
    return int8_breaking_copy(digits[0])


def _build(model, data, target: str, out: Path, **options) -> edgekit.BuildResult:
    return edgekit.build(model, target, calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out,
                         options=options_from_keywords(emulator="host", **options))


def _ranges(module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel weight ranges on both sides of the first pair, batch norm folded into the first conv."""
    conv, norm, second = module.features[0], module.features[1], module.features[3]
    folded = conv.weight.abs().amax((1, 2, 3)) * norm.weight.abs() / torch.sqrt(norm.running_var + norm.eps)
    return folded.detach(), second.weight.abs().amax((0, 2, 3)).detach()


@pytest.mark.parametrize("kind", ["module", "exported_program"])
def test_equalizing_keeps_the_function_and_balances_the_ranges(kind, broken, digits):
    _, data = digits
    x = torch.from_numpy(data["x_eval"][:64])
    original = {k: v.clone() for k, v in broken.state_dict().items()}
    if kind == "module":
        model = LoadedModel("net", "module", "0" * 64, "net", module=broken)
    else:
        model = LoadedModel("net", "exported_program", "0" * 64, "net.pt2",
                            program=torch.export.export(broken, (x[:1],)))
    result = equalize(model, "on", {"x": data["x_calib"]}, ["x"])
    assert result.block["applied"] and result.block["pairs"] == DIGITS_PAIRS
    equalized = result.model.module if kind == "module" else result.model.program.module()
    with torch.no_grad():  # the .pt2 is exported at batch 1
        before = broken(x)
        after = torch.cat([equalized(x[i:i + 1]) for i in range(len(x))])
    assert float((after - before).abs().max()) <= 1e-4 * float(before.abs().max())
    if kind == "module":
        r1, r2 = _ranges(broken)
        assert float(r1.max() / r1.min()) > 1000  # the outlier channel
        r1, r2 = _ranges(equalized)
        assert torch.allclose(r1, r2, rtol=1e-3)  # both sides of every channel now share one range
    assert all(torch.equal(v, broken.state_dict()[k]) for k, v in original.items())  # the user's model untouched
    sqnr = result.block["sqnr_db"]
    assert sqnr["before"] < 10 and sqnr["after"] > 35


def test_pairs_stop_at_a_tensor_that_feeds_two_layers():
    class Branches(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) + self.c(h)

    program = torch.export.export(Branches().eval(), (torch.zeros(1, 4),))
    assert find_pairs(program) == []


@pytest.mark.parametrize("target", ["android-arm64-int8", "jetson-orin-int8", "onnxruntime-arm64-int8",
                                    "openvino-x86-int8", "android-arm64-executorch-int8"])
@pytest.mark.slow
def test_the_outlier_fixture_passes_on_every_route_with_no_layer_in_float(target, broken, digits, tmp_path: Path):
    _, data = digits
    result = _build(broken, data, target, tmp_path / "on", equalize="on")
    report = result.report
    assert result.passed and report["drift"]["accuracy_drop"] <= 1.0 and report["drift"]["top1_agreement"] >= 0.99
    assert report["quantization"]["float_modules"] == []
    block = report["quantization"]["equalization"]
    assert block["applied"] and block["pairs"] == DIGITS_PAIRS
    assert any(w.startswith("equalize on: 2 layer pair(s) equalized (features.0 -> features.3, classifier.1 -> "
                            "classifier.3)") for w in report["warnings"])


def test_a_pt2_file_is_equalized_too(broken, digits, tmp_path: Path):
    _, data = digits
    path = tmp_path / "broken.pt2"
    torch.export.save(torch.export.export(broken, (torch.from_numpy(data["x_eval"][:1]),)), path)
    result = _build(str(path), data, "onnxruntime-arm64-int8", tmp_path / "on", equalize="on")
    assert result.passed and result.report["quantization"]["equalization"]["pairs"] == DIGITS_PAIRS
    assert result.report["conversion"]["outputs"][0]["sqnr_db"] > 80  # the equalized program is what was converted


def test_auto_equalizes_the_outlier_fixture_because_it_measures_better(broken, digits, tmp_path: Path):
    _, data = digits
    result = _build(broken, data, "onnxruntime-arm64-int8", tmp_path / "auto")
    block = result.report["quantization"]["equalization"]
    assert block["mode"] == "auto" and block["applied"] and block["sqnr_db"]["after"] > block["sqnr_db"]["before"]
    assert result.passed


def test_equalize_on_is_refused_where_it_cannot_act(digits, tmp_path: Path):
    model, data = digits
    with pytest.raises(UnsupportedError, match="--equalize on prepares INT8 quantization; onnxruntime-arm64-fp32 "
                                               "is fp32") as info:
        _build(model, data, "onnxruntime-arm64-fp32", tmp_path / "fp32", equalize="on")
    assert info.value.exit_code == 2 and not (tmp_path / "fp32").exists()


def test_an_onnx_model_is_equalized_on_its_initializers(broken, digits, tmp_path: Path):
    """The outlier fixture as ONNX (the exporter folds the batch norm into the conv): auto measures, equalizes the
    initializers and INT8 passes; with --equalize off the same file fails the build."""
    _, data = digits
    path = tmp_path / "broken.onnx"
    torch.onnx.export(broken, (torch.from_numpy(data["x_eval"][:1]),), str(path), dynamo=False, input_names=["x"])
    result = _build(str(path), data, "onnxruntime-arm64-int8", tmp_path / "auto")
    block = result.report["quantization"]["equalization"]
    assert block["mode"] == "auto" and block["applied"]
    assert [(p["first"], p["second"]) for p in block["pairs"]] == [("features.0", "features.3"),
                                                                   ("classifier.1", "classifier.3")]
    assert block["sqnr_db"]["before"] < 10 and block["sqnr_db"]["after"] > 35
    assert result.passed and result.report["conversion"]["outputs"][0]["sqnr_db"] > 80
    off = _build(str(path), data, "onnxruntime-arm64-int8", tmp_path / "off", equalize="off")
    assert not off.passed and off.report["quantization"]["equalization"] is None


def test_a_model_without_pairs_says_so_when_asked(digits, tmp_path: Path):
    _, data = digits

    class Single(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    model = Single().eval()
    for mode in ("auto", "on"):
        result = _build(model, data, "onnxruntime-arm64-int8", tmp_path / mode, max_drop=100.0, min_agreement=0.0,
                        equalize=mode)
        assert result.report["quantization"]["equalization"] == {"mode": mode, "applied": False, "pairs": [],
                                                                 "sqnr_db": None}
        said = "equalize on: no pair of consecutive weighted layers to equalize" in result.report["warnings"]
        assert said == (mode == "on")  # auto stays quiet: the report says it
        assert np.isfinite(result.report["drift"]["outputs"][0]["sqnr_db"])


def _inverted_residual_with_an_outlier() -> torch.nn.Module:
    """A MobileNet block (1x1 expand, BN, ReLU6-free ReLU, 3x3 depthwise, BN, ReLU, pool, linear) whose expand
    channel 3 is x1000 and the depthwise channel 3 /1000: the same function, one INT8-hostile activation."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
                                torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 10)).eval()
    with torch.no_grad():
        for norm in (model[1], model[4]):
            norm.running_mean.uniform_(-0.1, 0.1)
            norm.running_var.uniform_(0.5, 1.5)
        model[1].weight[3] *= 1000
        model[1].bias[3] *= 1000
        model[3].weight[3] /= 1000
    return model


def test_a_depthwise_conv_is_the_second_layer_of_a_pair():
    model = _inverted_residual_with_an_outlier()
    x = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    loaded = LoadedModel("net", "module", "0" * 64, "net", module=model)
    result = equalize(loaded, "on", {"x": x}, ["x"])
    assert {"first": "0", "second": "3", "norm": "1"} in result.block["pairs"]
    equalized = result.model.module
    with torch.no_grad():
        before, after = model(torch.from_numpy(x)), equalized(torch.from_numpy(x))
    assert float((after - before).abs().max()) <= 1e-4 * float(before.abs().max())
    norm, depthwise = equalized[1], equalized[3]
    r1 = norm.weight.abs() / torch.sqrt(norm.running_var + norm.eps) * equalized[0].weight.abs().amax((1, 2, 3))
    r2 = depthwise.weight.abs().amax((1, 2, 3))
    assert torch.allclose(r1.detach(), r2.detach(), rtol=1e-3)  # channel 3 no longer 1000x the others
    assert result.block["sqnr_db"]["before"] < 15 and result.block["sqnr_db"]["after"] > 30
