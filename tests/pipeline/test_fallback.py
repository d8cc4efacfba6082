"""Accuracy-aware fallback on a model built to break INT8: minmax fails, the culprit is kept in float, it passes.
Built with --equalize off: equalization alone repairs this model (tests/transform/equalize/test_equalize.py)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import edgekit
import edgekit.bundle.inspect
from edgekit.config.options import options_from_keywords
from tests.helpers import int8_breaking_copy, pooled_breaking_copy


@pytest.fixture(scope="module")
def broken(digits):
    return int8_breaking_copy(digits[0])


def _build(model, data, target: str, out: Path, **options):
    return edgekit.build(model, target, calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out,
                         options=options_from_keywords(emulator="host", max_drop=1.0, equalize="off", **options))


def test_jetson_fallback_keeps_the_culprit_in_float_and_passes(broken, digits, tmp_path: Path):
    _, data = digits
    failed = _build(broken, data, "jetson-orin-int8", tmp_path / "minmax")
    assert not failed.passed and failed.report["drift"]["accuracy_drop"] > 1.0
    assert failed.report["layers"][0]["module"] == "features.1"
    fixed = _build(broken, data, "jetson-orin-int8", tmp_path / "auto", fallback="auto")
    assert fixed.passed and fixed.report["drift"]["accuracy_drop"] <= 1.0
    assert fixed.report["quantization"]["float_modules"] == ["features.4"]  # it reads the culprit's activation
    moved, *others = fixed.report["layers"]
    assert moved["module"] == "features.1" and moved["precision"] == "fp16"  # no Q/DQ: FP16 in the engine
    assert moved["chosen_because"].startswith("mixed precision (fallback auto): drift over the threshold, output "
                                              "SQNR")  # measured with only this layer quantized
    assert "dB with only this layer in INT8" in moved["chosen_because"]
    assert moved["chosen_because"].endswith("kept fp16")
    assert others and {r["precision"] for r in others} == {"int8"}
    assert any(w.startswith("fallback auto kept 1 activation(s) out of INT8 (features.1 -> fp16), computing features.4")
               for w in fixed.report["warnings"])
    [step] = fixed.report["quantization"]["ladder"]
    assert step["precision"] == "fp16" and step["passed"] and step["kept"] and step["module"] == "features.1"
    graph = onnx.load(str(tmp_path / "auto" / "model.qdq.onnx")).graph
    quantized_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert "relu" not in quantized_inputs  # the culprit's activation has no Q/DQ any more
    assert len(quantized_inputs) >= 2  # the rest stays INT8


def test_fallback_leaves_a_passing_model_alone(digits, tmp_path: Path):
    model, data = digits
    result = _build(model, data, "jetson-orin-int8", tmp_path / "b", fallback="auto")
    assert result.passed and result.report["quantization"]["float_modules"] == []
    assert "fallback" not in result.report["timings_s"]


@pytest.mark.slow
@pytest.mark.parametrize("converter", ["onnx2tf", "litert-torch"])
def test_android_ladder_moves_the_culprit_to_16x8_and_passes(converter, broken, digits, tmp_path: Path):
    """On both converter paths the culprit's activation goes to INT16 (its weights stay INT8): 16x8 is the first
    rung of the LiteRT ladder, and it passes, so float is not tried."""
    _, data = digits
    failed = _build(broken, data, "android-arm64-int8", tmp_path / "minmax", converter=converter)
    assert not failed.passed and failed.report["layers"][0]["module"] == "features.1"
    fixed = _build(broken, data, "android-arm64-int8", tmp_path / "auto", fallback="auto", converter=converter)
    assert fixed.passed and fixed.report["drift"]["accuracy_drop"] <= 1.0
    assert fixed.report["quantization"]["float_modules"] == []
    moved = fixed.report["layers"][0]
    assert (moved["module"], moved["precision"]) == ("features.1", "int16x8")
    assert moved["chosen_because"].endswith("kept int16x8")
    [step] = fixed.report["quantization"]["ladder"]
    assert step["precision"] == "int16x8" and step["passed"] and step["kept"]
    assert step["device_bytes"] < 1.1 * failed.report["size"]["device_bytes"]  # INT8 weights: the size stays
    summary = next(w for w in fixed.report["warnings"] if w.startswith("fallback auto"))
    assert "kept 1 activation(s) out of INT8 (features.1 -> int16x8)" in summary and "passes" in summary


@pytest.mark.slow
def test_a_latency_bound_sends_the_culprit_to_float_instead(broken, digits, tmp_path: Path):
    """16x8 runs on reference kernels (about 20x the INT8 model's host latency here): with --max-latency-ratio 3
    the ladder measures it, finds it over the bound, and keeps the layer in float."""
    _, data = digits
    fixed = _build(broken, data, "android-arm64-int8", tmp_path / "auto", converter="onnx2tf",
                   fallback=edgekit.Fallback("auto", max_latency_ratio=3.0))
    assert fixed.passed and fixed.report["quantization"]["float_modules"] == ["features.1", "features.4"]
    sixteen, floating = fixed.report["quantization"]["ladder"]
    assert sixteen["precision"] == "int16x8" and sixteen["latency_ratio"] > 3.0 and not sixteen["within_bounds"]
    assert floating["precision"] == "float32" and floating["within_bounds"] and floating["kept"]
    assert [(r["module"], r["precision"]) for r in fixed.report["layers"][:1]] == [("features.1", "float32")]
    ops = edgekit.bundle.inspect.inspect_path(tmp_path / "auto" / "model.tflite")["ops"]
    assert ops.get("DEQUANTIZE", 0) >= 1 and ops.get("CONV_2D", 0) == 2  # INT8 elsewhere, float around the culprit
    page = (tmp_path / "auto" / "report.html").read_text()
    assert '<tr class="kept"><td>features.1</td><td>float32</td><td>yes</td>' in page  # the ladder, step by step
    assert "<tr><td>features.1</td><td>int16x8</td><td>yes</td>" in page


def test_ladder_bounds_need_fallback_auto():
    with pytest.raises(edgekit.ConfigError, match="bound --fallback auto"):
        edgekit.Fallback("none", max_size=1000)


@pytest.mark.slow
def test_calibration_methods_change_the_android_activation_scales(digits, tmp_path: Path):
    model, data = digits
    scales = {}
    for method in ("minmax", "percentile", "entropy", "mse"):
        result = _build(model, data, "android-arm64-int8", tmp_path / method, calibration_method=method)
        assert result.report["quantization"]["method"] == method
        assert result.report["drift"]["top1_agreement"] >= 0.99, method
        scales[method] = {r["module"]: r["scale"] for r in result.report["layers"]}
    assert scales["minmax"]["features.4"] != scales["percentile"]["features.4"]
    assert len({tuple(sorted(s.items())) for s in scales.values()}) == 4


@pytest.mark.parametrize("form", ["pt2", "ts", "onnx"])
def test_fallback_and_per_layer_drift_on_saved_models(form, broken, digits, tmp_path: Path):
    """The same culprit found and kept out of INT8 when the model comes as a file: .pt2, TorchScript, ONNX."""
    import torch

    _, data = digits
    example = (torch.from_numpy(data["x_calib"][:1]),)
    path = tmp_path / f"broken.{ {'ts': 'pt'}.get(form, form) }"
    if form == "pt2":
        torch.export.save(torch.export.export(broken, example), path)
    elif form == "ts":
        torch.jit.save(torch.jit.trace(broken, example), path)
    else:
        torch.onnx.export(broken, example, str(path), dynamo=True, input_names=["x"])
    fixed = _build(str(path), data, "jetson-orin-int8", tmp_path / "auto", fallback="auto")
    assert fixed.passed and fixed.report["drift"]["accuracy_drop"] <= 1.0
    moved = fixed.report["layers"][0]
    # TorchScript's exporter folds the batch norm (features.1) into the conv before it: the culprit is their output
    assert moved["module"] == ("features.0" if form == "ts" else "features.1") and moved["precision"] == "fp16"


def test_sensitivity_ranks_the_culprit_by_its_effect_on_the_output(broken, digits, tmp_path: Path):
    """One INT8 activation at a time in the float export: the outlier's activation alone ruins the output, every
    other one alone leaves it above 35 dB."""
    from edgekit.measure.sensitivity import layer_sensitivity

    _, data = digits
    failed = _build(broken, data, "android-arm64-int8", tmp_path / "minmax", converter="litert-torch")
    rows = failed.report["layers"]
    reference = tmp_path / "minmax" / "reference.onnx"
    name = onnx.load(str(reference)).graph.input[0].name
    scores = layer_sensitivity(reference, [[row] for row in rows], {name: data["x_eval"]})
    assert set(scores) == {r["tensor"] for r in rows if r["tensor"] in scores} and len(scores) >= 4
    worst = min(scores, key=scores.get)
    assert worst == next(r["tensor"] for r in rows if r["module"] == "features.1") and scores[worst] < 5.0
    assert all(v > 35.0 for k, v in scores.items() if k != worst)


def test_a_non_finite_output_ranks_below_every_finite_one():
    from types import SimpleNamespace

    from edgekit.pipeline.fallback import _worst_sqnr

    assert _worst_sqnr(SimpleNamespace(drift={"outputs": [{"sqnr_db": 30.0}, {"sqnr_db": None}]})) == float("-inf")
    assert _worst_sqnr(SimpleNamespace(drift={"outputs": [{"sqnr_db": 30.0}, {"sqnr_db": 12.5}]})) == 12.5


GROUPED = [("onnxruntime-arm64-int8", None, "float32"), ("android-arm64-int8", "onnx2tf", "int16x8"),
           ("android-arm64-int8", "litert-torch", "int16x8"), ("openvino-x86-int8", None, "float32"),
           ("android-arm64-executorch-int8", None, "float32")]
POOL = "features.6"  # the max-pool after the ruined activation


@pytest.mark.slow
@pytest.mark.parametrize(("target", "converter", "rung"), GROUPED, ids=[f"{t}-{c}" if c else t for t, c, _ in GROUPED])
def test_the_ladder_moves_what_one_scale_covers_together(target, converter, rung, digits, tmp_path: Path):
    """The activation, the max-pool after it and the flattened input of the next layer share one INT8 scale
    (tests.helpers.pooled_breaking_copy): the ladder moves the group the built model ties, in one step, and names
    it. OpenVINO's NNCF gives the pool's output a scale of its own: there the pool alone is the group."""
    model, data = digits
    result = _build(pooled_breaking_copy(model), data, target, tmp_path / "b", fallback="auto", converter=converter)
    assert result.passed and result.report["drift"]["accuracy_drop"] <= 1.0
    [kept] = [e for e in result.report["quantization"]["ladder"] if e["kept"]]
    assert kept["precision"] == rung and POOL in kept["group"]
    if target.startswith("openvino"):
        assert kept["group"] == [POOL]
    else:
        assert len(kept["group"]) == 3 and {"classifier.0"} < set(kept["group"])  # the flatten the linear reads
        assert len(result.report["quantization"]["ladder"]) == 1  # the first step passes
        moved = [r for r in result.report["layers"] if "(one INT8 scale)" in r["chosen_because"]]
        assert len(moved) == 3 and {r["precision"] for r in moved} == {rung}
    summary = next(w for w in result.report["warnings"] if w.startswith("fallback auto kept"))
    assert POOL in summary and "passes" in summary


@pytest.mark.slow
@pytest.mark.parametrize(("target", "converter"), [("onnxruntime-arm64-int8", None),
                                                   ("android-arm64-int8", "litert-torch")])
def test_one_tensor_at_a_time_the_ladder_cannot_climb_out(target, converter, digits, tmp_path: Path, monkeypatch):
    """The same model with every layer its own group: no single move of the climb passes (each leaves the others
    on the ruined scale). (The back-off, every layer out of INT8 and back, would still find a model at many more
    builds: it is left out here.)"""
    from edgekit.pipeline import fallback

    monkeypatch.setattr(fallback, "scale_groups", lambda rows, links: [[row] for row in rows])
    monkeypatch.setattr(fallback, "back_off_rungs", lambda route, target: [])
    model, data = digits
    failed = _build(pooled_breaking_copy(model), data, target, tmp_path / "b", fallback="auto", converter=converter)
    assert not failed.passed
    climb = failed.report["quantization"]["ladder"]
    assert len(climb) >= 3 and not any(e["passed"] for e in climb)
    assert all(len(e["group"]) == 1 for e in climb) and any(e["group"] == [POOL] for e in climb)


@pytest.mark.slow
@pytest.mark.parametrize(("target", "rung"), [("jetson-orin-int8", "fp16"),
                                              ("android-arm64-executorch-int8", "float32")])
def test_the_back_off_on_routes_without_int8_weights_starts_from_float(target, rung, digits, tmp_path: Path,
                                                                       monkeypatch):
    """With the climb left out, the back-off alone: every layer in float (FP16 on Jetson), then groups back to INT8
    while the gate holds; the ruined group is what stays, and the report says the route had to start from float."""
    from edgekit.pipeline import fallback

    monkeypatch.setattr(fallback, "_ladder", lambda route, target, device, measured, *rest: (device, measured, {}, []))
    model, data = digits
    result = _build(pooled_breaking_copy(model), data, target, tmp_path / "b", fallback="auto")
    assert result.passed and result.report["drift"]["accuracy_drop"] <= 1.0
    ladder = result.report["quantization"]["ladder"]
    assert ladder[0]["tensor"] == "*" and ladder[0]["precision"] == rung and ladder[0]["kept"]
    assert any(e["kept"] and e["precision"] == "int8" for e in ladder[1:])  # groups went back to INT8
    left = [r for r in result.report["layers"] if r["precision"] == rung]
    assert left and len(left) < len(result.report["layers"])
    assert POOL in {r["module"] for r in left} | {m for r in left for m in r.get("modules") or []}
    assert any("has no form with INT8 weights and float compute" in w and f"started from every layer in {rung}" in w
               for w in result.report["warnings"])


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime-arm64-int8", "openvino-x86-int8"])
def test_the_back_off_starts_from_int8_weights_with_float_compute(target, digits, tmp_path: Path, monkeypatch):
    """The back-off alone on ONNX Runtime and OpenVINO: every layer computes in float with its weights in INT8 (ONNX
    Runtime: a DequantizeLinear of an INT8 initializer before each Conv / Gemm; OpenVINO: NNCF's weight
    compression), at about the INT8 size; then groups go back to INT8 while the gate holds. The shipped file holds
    the INT8 weights (no optimiser folds them back to float)."""
    from edgekit.pipeline import fallback

    monkeypatch.setattr(fallback, "_ladder", lambda route, target, device, measured, *rest: (device, measured, {}, []))
    model, data = digits
    plain = _build(pooled_breaking_copy(model), data, target, tmp_path / "plain")
    result = _build(pooled_breaking_copy(model), data, target, tmp_path / "b", fallback="auto")
    assert not plain.passed and result.passed and result.report["drift"]["accuracy_drop"] <= 1.0
    every, *back = result.report["quantization"]["ladder"]
    assert (every["tensor"], every["precision"], every["kept"]) == ("*", "int8-weights", True)
    float_bytes = result.report["size"]["float_device_bytes"]
    assert every["device_bytes"] < 0.5 * float_bytes  # INT8 weights, not float ones
    assert any(e["kept"] and e["precision"] == "int8" for e in back)  # groups went back to INT8
    left = [r for r in result.report["layers"] if r["precision"] == "int8-weights"]
    assert left and len(left) < len(result.report["layers"]) and all("back-off" in r["chosen_because"] for r in left)
    assert not any("has no form with INT8 weights" in w for w in result.report["warnings"])
    assert result.report["size"]["device_bytes"] < 0.5 * float_bytes
    assert _weight_only_ops(tmp_path / "b", target)  # float activations in, INT8 weights dequantized


def _weight_only_ops(bundle: Path, target: str) -> list[str]:
    """The convolutions and matrix products of the shipped model that read a float activation and INT8 weights."""
    import numpy as np
    from onnx import numpy_helper

    if target.startswith("onnxruntime"):
        graph = onnx.load(str(bundle / "model.onnx")).graph
        initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm") and n.input[0] not in dequantized
                and initializers.get(dequantized.get(n.input[1]), np.zeros(0, np.float32)).dtype == np.int8]
    import openvino as ov

    def source(value, through: tuple[str, ...]):
        node = value.get_node()
        while node.get_type_name() in through:
            node = node.input_value(0).get_node()
        return node

    found = []
    for op in ov.Core().read_model(str(bundle / "model.xml")).get_ops():
        if op.get_type_name() not in ("Convolution", "MatMul"):
            continue
        data = source(op.input_value(0), ("Reshape",))
        weight = source(op.input_value(1), ("Convert", "Multiply", "Subtract", "Reshape", "Transpose"))
        if data.get_type_name() != "FakeQuantize" and weight.get_type_name() == "Constant" and \
                "int8" in str(weight.get_element_type()):
            found.append(op.get_friendly_name())
    return found
