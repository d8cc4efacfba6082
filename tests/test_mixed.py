"""A head that concatenates boxes (0..~600) with class scores (0..1): separate INT8 scales keep the scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit import mixed
from examples.digits import load_digits_split
from tests.helpers import mixed_head_model, two_scale_head_model


@pytest.fixture(scope="module")
def head():
    return mixed_head_model(), load_digits_split(0)


def _scores_error(bundle: Path) -> float:
    with np.load(bundle / "golden" / "outputs.npz") as golden:
        return float(np.max(np.abs(golden["reference/output"][:, 4:] - golden["device/output"][:, 4:])))


def _build(head, out: Path):
    model, data = head
    return edgekit.build(model, "android-arm64-int8", calibration=data["x_calib"], eval_data=data["x_eval"],
                         out=out, emulator="host")


def test_mixed_range_concat_is_found_on_the_calibration_data(head, tmp_path: Path):
    result = _build(head, tmp_path / "b")
    notes = [w for w in result.report["warnings"] if "joins tensors of very different ranges" in w]
    assert len(notes) == 1 and "kept in float so each input keeps its own INT8 scale" in notes[0]
    assert _scores_error(tmp_path / "b") < 0.05
    assert result.report["drift"]["outputs"][0]["sqnr_db"] > 35


def test_without_separate_scales_the_scores_are_lost(head, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(mixed, "RANGE_RATIO", float("inf"))  # switch the detection off: one shared scale
    result = _build(head, tmp_path / "shared")
    assert not any("very different ranges" in w for w in result.report["warnings"])
    assert _scores_error(tmp_path / "shared") > 0.3
    assert result.report["drift"]["outputs"][0]["sqnr_db"] < 30


def test_a_concat_that_joins_mixed_concats_stays_in_float_too(tmp_path: Path, monkeypatch):
    """A detector joins its per-scale [boxes, scores] heads along the anchors: that last concat carries the same
    mixed rows, and one INT8 scale at the very output would zero the scores while the output's SQNR, dominated by
    the boxes, still looks fine."""
    data = load_digits_split(0)
    model = two_scale_head_model()
    result = edgekit.build(model, "android-arm64-int8", calibration=data["x_calib"], eval_data=data["x_eval"],
                           out=tmp_path / "b", emulator="host")
    joined = [w for w in result.report["warnings"] if "joins the outputs of mixed-range concats" in w]
    assert len(joined) == 1, result.report["warnings"]
    with np.load(tmp_path / "b" / "golden" / "outputs.npz") as golden:
        error = np.abs(golden["reference/output"][:, 4:] - golden["device/output"][:, 4:])
    assert float(error.max()) < 0.05
