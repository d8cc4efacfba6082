"""Accuracy-aware fallback on a model built to break INT8: minmax fails, the culprit is kept in float, it passes."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import edgekit
from tests.helpers import int8_breaking_copy


@pytest.fixture(scope="module")
def broken(digits):
    return int8_breaking_copy(digits[0])


def _build(model, data, target: str, out: Path, **options):
    return edgekit.build(model, target, calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out, emulator="host", max_drop=1.0, **options)


def test_jetson_fallback_keeps_the_culprit_in_float_and_passes(broken, digits, tmp_path: Path):
    _, data = digits
    failed = _build(broken, data, "jetson-orin-int8", tmp_path / "minmax")
    assert not failed.passed and failed.report["drift"]["accuracy_drop"] > 1.0
    assert failed.report["layers"][0]["module"] == "features.1"
    fixed = _build(broken, data, "jetson-orin-int8", tmp_path / "auto", fallback="auto")
    assert fixed.passed and fixed.report["drift"]["accuracy_drop"] <= 1.0
    assert fixed.report["quantization"]["float_modules"] == ["features.1"]
    assert any(w.startswith("fallback auto kept 1 layer(s) in float (features.1)") for w in fixed.report["warnings"])
    graph = onnx.load(str(tmp_path / "auto" / "model.qdq.onnx")).graph
    quantized_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert "relu" not in quantized_inputs  # the culprit's activation has no Q/DQ any more
    assert len(quantized_inputs) >= 2  # the rest stays INT8


def test_fallback_leaves_a_passing_model_alone(digits, tmp_path: Path):
    model, data = digits
    result = _build(model, data, "jetson-orin-int8", tmp_path / "b", fallback="auto")
    assert result.passed and result.report["quantization"]["float_modules"] == []
    assert "fallback" not in result.report["timings_s"]
