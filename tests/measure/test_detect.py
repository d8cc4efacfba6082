"""The detection metric's own code against hand-made boxes: IoU, class-aware NMS, the layouts' decoding, matching
against the float model's detections, and mAP on a small case worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.inputs.data import Boxes, load_data
from edgekit.measure.detect import (
    Detections,
    Detector,
    agreement,
    average_precision,
    decode,
    detection_block,
    iou_matrix,
    nms,
)


def _dets(boxes, scores, classes) -> Detections:
    return Detections(np.array(boxes, float).reshape(-1, 4), np.array(scores, float), np.array(classes, int))


def test_iou_of_known_boxes():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], float)
    assert iou_matrix(a, b)[0].tolist() == pytest.approx([50 / 150, 0.0])
    assert iou_matrix(a[:1], a[:1])[0, 0] == 1.0


def test_nms_suppresses_only_within_a_class():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    kept = nms(boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 0, 1, 0]), iou=0.7)
    assert kept.tolist() == [0, 2, 3]  # box 1 overlaps box 0 (IoU 0.82) in class 0; box 2 is class 1


def _ultralytics(boxes_xywh, scores) -> np.ndarray:
    """One image, (1, 4+C, A): rows of centre-size boxes then class scores."""
    return np.concatenate([np.array(boxes_xywh, float).T, np.array(scores, float).T])[None]


def test_the_layouts_decode_to_the_same_detections():
    xywh = [[20, 20, 10, 10], [21, 20, 10, 10], [80, 80, 20, 20], [50, 50, 4, 4]]
    scores = [[0.9, 0.0], [0.6, 0.1], [0.1, 0.8], [0.2, 0.1]]  # the last is under the 0.25 confidence
    rows = _ultralytics(xywh, scores)
    found = decode([rows], Detector("ultralytics", ("output0",)))[0]
    assert found.boxes.tolist() == [[15, 15, 25, 25], [70, 70, 90, 90]]
    assert found.classes.tolist() == [0, 1] and found.scores.tolist() == [0.9, 0.8]
    transposed = decode([rows.transpose(0, 2, 1)], Detector("ultralytics-t", ("output0",)))[0]
    assert transposed.boxes.tolist() == found.boxes.tolist()
    v5 = np.concatenate([rows[:, :4], np.full((1, 1, 4), 0.5), rows[:, 4:]], 1).transpose(0, 2, 1)
    halved = decode([v5], Detector("yolov5", ("output0",)))[0]  # objectness 0.5 halves every score
    assert halved.scores.tolist() == [0.45, 0.4] and halved.classes.tolist() == [0, 1]
    corners = np.array([[[15, 15, 25, 25], [16, 15, 26, 25], [70, 70, 90, 90], [48, 48, 52, 52]]], float)
    pair = decode([corners, np.array(scores, float)[None]], Detector("boxes-scores", ("boxes", "scores")))[0]
    assert pair.boxes.tolist() == found.boxes.tolist()


def test_recall_and_precision_against_the_float_model():
    reference = [_dets([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.8, 0.7], [0, 1, 1])]
    device = [_dets([[1, 0, 11, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]],
                    [0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1])]  # the third changed class, the fourth is new
    block = agreement(reference, device, ("zero", "one"))
    assert (block["float_detections"], block["device_detections"], block["matched"]) == (3, 4, 2)
    assert block["recall"] == pytest.approx(2 / 3) and block["precision"] == pytest.approx(0.5)
    by_class = {row["name"]: (row["recall"], row["precision"]) for row in block["per_class"]}
    assert by_class == {"zero": (1.0, 0.5), "one": (0.5, 0.5)}
    assert agreement([_dets([], [], [])], [_dets([], [], [])])["recall"] == 1.0  # nothing to find, nothing found


def test_average_precision_of_a_case_worked_by_hand():
    """Class 0: two true boxes; predictions at 0.9 (hit), 0.8 (miss), 0.7 (hit) give recall 0.5, 0.5, 1 at
    precision 1, 1/2, 2/3: the 101-point envelope is 1 up to recall 0.5 (51 points) and 2/3 above (50 points)."""
    truth = [_dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0, 0]), _dets([[0, 0, 10, 10]], [1], [1])]
    predictions = [_dets([[0, 0, 10, 10], [50, 50, 60, 60], [21, 20, 31, 30]], [0.9, 0.8, 0.7], [0, 0, 0]),
                   _dets([[0, 0, 10, 9]], [0.6], [1])]
    assert average_precision(predictions, truth, 0, 0.5) == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert average_precision(predictions, truth, 1, 0.5) == 1.0
    assert average_precision(predictions, truth, 1, 0.95) == 0.0  # IoU 0.9 misses at 0.95


def test_detection_block_with_ground_truth_reports_map_of_both_models():
    xywh = [[5, 5, 10, 10], [25, 25, 10, 10]]
    reference = _ultralytics(xywh, [[0.9, 0.0], [0.0, 0.8]])
    device = _ultralytics(xywh, [[0.9, 0.0], [0.0, 0.1]])  # the second detection lost
    truth = Boxes(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 1]), np.array([0, 0]))
    block = detection_block([reference], [device], Detector("ultralytics", ("output0",)), truth)
    assert (block["recall"], block["precision"]) == (0.5, 1.0)
    assert block["map50"] == {"float": 100.0, "device": 100.0, "drop": 0.0}  # 0.1 is still above mAP's 0.001
    assert detection_block([reference], [device], Detector("ultralytics", ("output0",)))["map50"] is None


def test_ground_truth_boxes_load_from_npz_and_follow_a_subset(tmp_path):
    path = tmp_path / "eval.npz"
    np.savez(path, x=np.zeros((3, 3, 8, 8), np.float32), boxes=np.array([[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]]),
             box_classes=np.array([0, 1, 2]), box_image=np.array([0, 2, 2]))
    data = load_data(path)
    assert set(data.inputs) == {"x"} and data.boxes.classes.tolist() == [0, 1, 2]
    taken = data.take(np.array([2, 1]))
    assert taken.boxes.image.tolist() == [0, 0] and taken.boxes.classes.tolist() == [1, 2]
    np.savez(path, x=np.zeros((3, 3, 8, 8), np.float32), boxes=np.zeros((2, 4)), box_classes=np.array([0, 1]))
    from edgekit.errors import DataError

    with pytest.raises(DataError, match="ground-truth boxes need all of boxes, box_classes, box_image"):
        load_data(path)
