"""Detections, measured the way a detector's app uses them: decode, class-aware NMS, then the device's detections
matched to the float model's per class at IoU >= 0.5 (recall and precision against the float model); with
ground-truth boxes, mAP@0.5 and mAP@0.5:0.95 of both models.

Layouts (docs/outputs.md):
- `ultralytics`: one output (N, 4+C, A): rows 0-3 box centre x, y, width, height in input pixels, rows 4.. class
  scores after the sigmoid (YOLOv8/v11 as Ultralytics exports them); `ultralytics-t`: the same as (N, A, 4+C).
- `yolov5`: one output (N, A, 5+C): centre x, y, width, height, objectness, class probabilities; a box's score
  for class k is objectness x probability k.
- `boxes-scores`: two outputs, boxes (N, A, 4) as corners x1, y1, x2, y2 and scores (N, A, C) (SSD-like heads
  after their box decode).

Defaults as Ultralytics predicts: confidence 0.25, NMS IoU 0.7, at most 300 detections an image; mAP is taken as
Ultralytics validates, from detections down to confidence 0.001, with COCO's 101-point interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.inputs.data import Boxes

LAYOUTS = ("ultralytics", "ultralytics-t", "yolov5", "boxes-scores")
MATCH_IOU = 0.5
MAP_CONFIDENCE = 0.001
MAX_DETECTIONS = 300
COCO_IOUS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass(frozen=True)
class Detector:
    """How a detector's output(s) are read: the layout, the output names it spans (two for boxes-scores), and the
    confidence and NMS IoU an app applies."""

    layout: str
    outputs: tuple[str, ...]
    confidence: float = 0.25
    iou: float = 0.7
    names: tuple[str, ...] = ()  # class names, when the model's metadata gives them

    def as_dict(self) -> dict:
        return {"layout": self.layout, "outputs": list(self.outputs), "confidence": self.confidence, "iou": self.iou}

    @classmethod
    def from_dict(cls, raw: dict) -> Detector:
        """From manifest.json `device.tolerances.detectors` (checked: data from a bundle)."""
        layout, outputs = raw.get("layout"), raw.get("outputs")
        confidence, iou = float(raw.get("confidence", 0.25)), float(raw.get("iou", 0.7))
        count = 2 if layout == "boxes-scores" else 1
        if layout not in LAYOUTS or not isinstance(outputs, list) or len(outputs) != count or \
                not all(isinstance(o, str) for o in outputs) or not (0 < confidence < 1 and 0 < iou < 1):
            raise ValueError(f"not a detector reading: {raw!r}")
        return cls(layout, tuple(outputs), confidence, iou)


@dataclass(frozen=True)
class Detections:
    """One image's detections: corners (K, 4) x1, y1, x2, y2; scores (K,); classes (K,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def parts(layout: str, shape: tuple) -> list[tuple[str, int, int, int]] | None:
    """The named parts of a one-output layout: (name, axis, start, stop), or None (boxes-scores: two outputs)."""
    if layout == "ultralytics":
        return [("boxes", 1, 0, 4), ("scores", 1, 4, int(shape[1]))]
    if layout == "ultralytics-t":
        return [("boxes", 2, 0, 4), ("scores", 2, 4, int(shape[2]))]
    if layout == "yolov5":
        return [("boxes", 2, 0, 4), ("objectness", 2, 4, 5), ("scores", 2, 5, int(shape[2]))]
    return None


def candidates(arrays: list[np.ndarray], layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Every anchor's corners (N, A, 4) and class scores (N, A, C), from the layout's output(s)."""
    if layout == "boxes-scores":
        return arrays[0].astype(np.float64), arrays[1].astype(np.float64)
    rows = np.asarray(arrays[0], np.float64)
    rows = rows.transpose(0, 2, 1) if layout == "ultralytics" else rows
    centre = rows[..., :4]
    corners = np.concatenate([centre[..., :2] - centre[..., 2:4] / 2, centre[..., :2] + centre[..., 2:4] / 2], -1)
    scores = rows[..., 5:] * rows[..., 4:5] if layout == "yolov5" else rows[..., 4:]
    return corners, scores


def decode(arrays: list[np.ndarray], detector: Detector, confidence: float | None = None) -> list[Detections]:
    """Per image: the best class of each anchor above the confidence, after class-aware NMS."""
    corners, scores = candidates(arrays, detector.layout)
    threshold = detector.confidence if confidence is None else confidence
    return [_image_detections(c, s, threshold, detector.iou) for c, s in zip(corners, scores)]


def _image_detections(corners: np.ndarray, scores: np.ndarray, confidence: float, iou: float) -> Detections:
    best = scores.argmax(1)
    score = scores[np.arange(len(scores)), best]
    keep = np.flatnonzero(np.isfinite(score) & (score > confidence) & np.all(np.isfinite(corners), 1))
    kept = nms(corners[keep], score[keep], best[keep], iou)
    index = keep[kept]
    return Detections(corners[index], score[index], best[index])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every corner box in `a` (K, 4) with every one in `b` (M, 4)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    low, high = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0.0, None), -1)
    area_a, area_b = _area(a), _area(b)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float,
        limit: int = MAX_DETECTIONS) -> np.ndarray:
    """Greedy class-aware NMS: indices kept (at most `limit`), highest score first; a box suppresses only boxes of
    its class. Each kept box is compared with the boxes still left, so memory grows with the candidates, not with
    their square (a 640 px YOLOv8 keeps thousands at mAP's confidence 0.001)."""
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    while order.size and len(kept) < limit:
        first, order = int(order[0]), order[1:]
        kept.append(first)
        same = classes[order] == classes[first]
        overlaps = iou_matrix(boxes[first:first + 1], boxes[order[same]])[0]
        drop = np.zeros(order.size, bool)
        drop[np.flatnonzero(same)[overlaps > iou]] = True
        order = order[~drop]
    return np.array(kept, np.int64)


def match(found: Detections, wanted: Detections, threshold: float = MATCH_IOU) -> np.ndarray:
    """For each detection in `found` (highest score first), whether it matches a still unmatched box of
    `wanted` of its class at IoU >= threshold (the best such box). Returns a bool per detection of `found`."""
    hit = np.zeros(len(found.scores), bool)
    if not len(found.scores) or not len(wanted.classes):
        return hit
    overlaps = iou_matrix(found.boxes, wanted.boxes)
    taken = np.zeros(len(wanted.classes), bool)
    for i in np.argsort(-found.scores, kind="stable"):
        usable = (~taken) & (wanted.classes == found.classes[i]) & (overlaps[i] >= threshold)
        if usable.any():
            j = int(np.argmax(np.where(usable, overlaps[i], -1.0)))
            taken[j], hit[i] = True, True
    return hit


def agreement(reference: list[Detections], device: list[Detections], names: tuple[str, ...] = ()) -> dict:
    """Recall and precision of the device's detections against the float model's, overall and per class, and the
    images where they agree least."""
    counts: dict[int, list[int]] = {}  # class -> [float detections, device detections, matched]
    images = []
    for index, (ref, dev) in enumerate(zip(reference, device)):
        hit = match(dev, ref)
        for cls in set(ref.classes.tolist()) | set(dev.classes.tolist()):
            row = counts.setdefault(int(cls), [0, 0, 0])
            row[0] += int(np.sum(ref.classes == cls))
            row[1] += int(np.sum(dev.classes == cls))
            row[2] += int(np.sum(hit & (dev.classes == cls)))
        images.append((index, len(ref.scores), len(dev.scores), int(hit.sum())))
    total = np.sum(list(counts.values()), 0) if counts else np.zeros(3, int)
    per_class = [{"class": cls, "name": (names[cls] or None) if cls < len(names) else None, **_rates(*row)}
                 for cls, row in sorted(counts.items())]
    worst = sorted((_rates(r, d, m) | {"image": i} for i, r, d, m in images),
                   key=lambda row: (min(row["recall"], row["precision"]), row["image"]))
    return {**_rates(*(int(v) for v in total)), "per_class": per_class, "worst_images": worst[:5]}


def _rates(reference: int, device: int, matched: int) -> dict:
    """Nothing to find and nothing found is full agreement."""
    return {"float_detections": reference, "device_detections": device, "matched": matched,
            "recall": round(matched / reference, 6) if reference else 1.0,
            "precision": round(matched / device, 6) if device else 1.0}


def average_precision(predictions: list[Detections], truth: list[Detections], cls: int, threshold: float) -> float:
    """AP of one class at one IoU threshold, COCO's 101-point interpolated precision-recall area."""
    scores, hits = [], []
    wanted = 0
    for found, boxes in zip(predictions, truth):
        own, truth_own = _subset(found, found.classes == cls), _subset(boxes, boxes.classes == cls)
        wanted += len(truth_own.classes)
        scores.extend(own.scores.tolist())
        hits.extend(match(own, truth_own, threshold).tolist())
    if wanted == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(hits, float)[order]) if hits else np.zeros(0)
    recall = tp / wanted
    precision = tp / np.arange(1, len(tp) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = np.linspace(0.0, 1.0, 101)
    taken = np.searchsorted(recall, points, side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in taken]))


def _subset(found: Detections, keep: np.ndarray) -> Detections:
    return Detections(found.boxes[keep], found.scores[keep], found.classes[keep])


def mean_ap(predictions: list[Detections], truth: list[Detections], thresholds: tuple[float, ...]) -> float:
    """Mean over the classes with ground truth, and over the IoU thresholds."""
    classes = sorted(set(np.concatenate([t.classes for t in truth]).tolist())) if truth else []
    values = [average_precision(predictions, truth, cls, t) for cls in classes for t in thresholds]
    return float(np.mean(values)) if values else float("nan")


def map_block(ref: list[Detections], dev: list[Detections], truth: Boxes) -> dict:
    """mAP@0.5 and mAP@0.5:0.95 of the float and the device model's detections (decoded down to MAP_CONFIDENCE)
    against ground truth, in points, and the drop."""
    images = [_truth_of(truth, i) for i in range(len(ref))]
    block = {}
    for key, thresholds in (("map50", (0.5,)), ("map50_95", COCO_IOUS)):
        before, after = mean_ap(ref, images, thresholds) * 100.0, mean_ap(dev, images, thresholds) * 100.0
        block[key] = {"float": round(before, 4), "device": round(after, 4), "drop": round(before - after, 4)}
    return block


def _truth_of(truth: Boxes, index: int) -> Detections:
    keep = truth.image == index
    return Detections(truth.corners[keep], np.ones(int(keep.sum())), truth.classes[keep])


def detection_block(reference: list[np.ndarray], device: list[np.ndarray], detector: Detector,
                    truth: Boxes | None = None) -> dict:
    """report.json `drift.outputs[].detection`: the reading, recall and precision vs float, and mAP with labels."""
    with_truth = truth is not None and len(truth.classes)
    ref = decode(reference, detector, MAP_CONFIDENCE if with_truth else None)
    dev = decode(device, detector, MAP_CONFIDENCE if with_truth else None)
    # greedy NMS never lets a box suppress a higher-scoring one: the app's detections are those above its confidence
    app = [[_subset(d, d.scores > detector.confidence) for d in found] for found in (ref, dev)] if with_truth \
        else (ref, dev)
    block = {**detector.as_dict(), "match_iou": MATCH_IOU, **agreement(*app, detector.names)}
    block.update(map_block(ref, dev, truth) if with_truth else {"map50": None, "map50_95": None})
    return block
