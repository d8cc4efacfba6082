"""Joined outputs by part, embeddings by their values: measured without any converter."""

from __future__ import annotations

import numpy as np

from edgekit.config.options import Gate
from edgekit.measure.drift import drift_block, failure_reasons
from edgekit.measure.parts import is_normalized, neighbour_agreement, split_by_range

GATE = Gate(min_sqnr=20.0, min_recall=0.95, min_precision=0.95)


def _joined(rng, samples=16, classes=6, anchors=300) -> np.ndarray:
    """Boxes in pixels (rows 0-3, up to 640) beside sigmoid class scores (rows 4..), as a YOLO head puts out."""
    boxes = rng.uniform(10, 640, (samples, 4, anchors))
    scores = 1 / (1 + np.exp(-rng.normal(-4, 3, (samples, classes, anchors))))
    return np.concatenate([boxes, scores], 1).astype(np.float32)


def test_a_joined_output_splits_where_the_ranges_part():
    rng = np.random.default_rng(0)
    parts = split_by_range(_joined(rng))
    assert [(p[1], p[2], p[3]) for p in parts] == [(1, 0, 4), (1, 4, 10)]
    assert split_by_range(rng.normal(size=(16, 10, 300))) is None  # one thing
    assert split_by_range(_joined(rng).transpose(0, 2, 1))[1][1:] == (2, 4, 10)  # (N, A, 4+C): along the last axis


def test_destroyed_scores_fail_the_gate_though_the_whole_tensor_looks_fine():
    """INT8 with one scale for the joined tensor: step 640/255 = 2.5, so every score rounds to 0; the whole
    tensor keeps ~48 dB because the boxes carry its energy."""
    rng = np.random.default_rng(1)
    reference = _joined(rng)
    step = float(np.abs(reference).max()) / 127
    device = np.round(reference / step) * step
    drift = drift_block({"output0": reference}, {"output0": device}, None, {"output0": "regress"}, GATE)
    row = drift["outputs"][0]
    assert row["sqnr_db"] > 40 and not drift["passed"]
    parts = {p["name"]: p["sqnr_db"] for p in row["parts"]}
    assert parts["rows 0-3"] > 40 and parts["rows 4-9"] < 5
    assert failure_reasons(drift)[0].startswith("output output0 part rows 4-9 SQNR")


def test_embeddings_are_found_by_their_norm_and_judged_by_their_neighbours():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(40, 64))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert is_normalized(unit) and not is_normalized(vectors)
    softmax = np.exp(20 * vectors) / np.exp(20 * vectors).sum(1, keepdims=True)  # near one-hot: L2 near 1
    assert not is_normalized(softmax)
    assert neighbour_agreement(unit, unit + rng.normal(0, 1e-4, unit.shape)) == 1.0
    assert neighbour_agreement(unit, rng.permutation(unit)) < 0.5

