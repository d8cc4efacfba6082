"""What each model output is, so that its drift is measured the way that output is used.

- `classify`: class scores along axis 1 (`(N, C)`, or `(N, C, H, W)` per pixel). Gated by top-1 agreement and,
  with labels, accuracy drop.
- `regress`: values that matter as values (boxes, landmarks, heatmaps, probabilities over bins). Gated by SQNR
  (`--min-sqnr`, default the target's).
- `embed`: vectors compared by direction (embeddings, features). Gated by SQNR and nearest-neighbour agreement;
  per-sample cosine (min, mean) is reported beside it.
- `detect`: a detector's output(s), decoded and matched (edgekit/measure/detect.py). Gated by recall and precision
  against the float model's detections.

How edgekit decides, for an output the user did not name (`--outputs FILE.toml`) and without `--task`:
0. the model's metadata: an exporter that writes `task = "detect"` (Ultralytics, in ONNX metadata, a .pt2's or a
   TorchScript file's config.txt) makes its output(s) `detect`; an output whose every row is L2-normalised on the
   eval data is `embed` (decided once the reference outputs exist: `embed_by_values`);
1. its name, when the model gives names (dict keys, namedtuple fields): `box`, `bbox`, `landmark`, `reg`,
   `offset`, `coord`, `heatmap`, `depth`, `mask` -> regress; `emb`, `feat` -> embed; `logit`, `score`, `prob`,
   `cls`, `class` -> classify when it has the shape of class scores;
2. its shape: `(1, C)` with C >= 2 is class scores when it is the only such output (or, with labels, the only one
   whose C covers every label); with several candidates and nothing to tell them apart, none is taken for class
   scores and a warning asks the user to say which (top-1 agreement on box regression fails good models);
3. everything else: regress.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field

import numpy as np

from edgekit.config.options import Detect
from edgekit.errors import ConfigError
from edgekit.measure.detect import Detector
from edgekit.measure.drift import is_scores
from edgekit.measure.parts import is_normalized


@dataclass(frozen=True)
class Reading:
    """How a build reads the model's outputs: a task per output, and how each detect output is decoded."""

    tasks: dict[str, str]
    detectors: tuple[Detector, ...] = field(default=())

    def manifest(self) -> dict:
        return {"tasks": dict(self.tasks), "detectors": [d.as_dict() for d in self.detectors]}


MAX_CLASS_ID = 100_000  # class names beyond this are not a detector's: ignored

HINTS = (  # first match wins, on the lowercased output name split at non-letters
    ("regress", re.compile(r"box|bbox|landmark|reg|offset|coord|heatmap|depth|mask|delta|keypoint")),
    ("embed", re.compile(r"emb|feat|vector|hidden")),
    ("classify", re.compile(r"logit|score|prob|cls|class|pred")),
)


def output_tasks(shapes: dict[str, tuple], labels: np.ndarray | None, task: str | None = None,
                 per_output: dict[str, str] | None = None,
                 metadata: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """{output name: task} for every output, and the warnings to show (an ambiguous choice, unknown names)."""
    per_output = dict(per_output or {})
    unknown = sorted(set(per_output) - set(shapes))
    if unknown:
        raise ConfigError(f"--outputs names {', '.join(unknown)}, which the model does not have",
                          hint=f"the model's outputs: {', '.join(shapes)}")
    if task is None and (metadata or {}).get("task") == "detect":
        per_output = {**{name: "detect" for name in _detector_outputs(shapes)}, **per_output}
    tasks: dict[str, str] = {}
    for name in shapes:
        if name in per_output:
            tasks[name] = per_output[name]
        elif task is not None:
            tasks[name] = task
    bad = [n for n, t in tasks.items() if t == "classify" and len(shapes[n]) < 2]
    if bad:
        raise ConfigError(f"output {bad[0]} has shape {tuple(shapes[bad[0]])}: class scores need an axis 1",
                          hint="say regress or embed for it")
    warnings: list[str] = []
    rest = [n for n in shapes if n not in tasks]
    for name in rest:
        hinted = _hinted(name)
        if hinted is not None and (hinted != "classify" or _scores_shape(shapes[name], labels)):
            tasks[name] = hinted
    candidates = [n for n in rest if n not in tasks and _scores_shape(shapes[n], labels)]
    if labels is not None and len(candidates) > 1:
        covering = [n for n in candidates if shapes[n][1] > int(np.max(labels))]
        candidates = covering if len(covering) == 1 else candidates
    if len(candidates) == 1 and not any(t == "classify" for t in tasks.values()):
        tasks[candidates[0]] = "classify"
    elif len(candidates) > 1:
        warnings.append(f"outputs {', '.join(candidates)} could each be class scores: none is gated by top-1 "
                        "agreement, all by SQNR; say which with --outputs FILE.toml (name = \"classify\")")
    for name in shapes:
        tasks.setdefault(name, "regress")
    warnings += [_looks_like_detector(name, shapes[name]) for name in shapes
                 if tasks[name] == "regress" and name not in per_output and task is None
                 and _ultralytics_shape(shapes[name])]
    return {name: tasks[name] for name in shapes}, warnings


def _detector_outputs(shapes: dict[str, tuple]) -> list[str]:
    """The outputs a detector's metadata speaks of: the one of Ultralytics' shape, else boxes and scores."""
    single = [name for name, shape in shapes.items() if len(shape) == 3]
    return single[:1] if len(single) == 1 else [n for n, s in shapes.items() if len(s) == 3][:2]


def _ultralytics_shape(shape: tuple) -> bool:
    """(N, 4+C, A) with many more anchor points than rows, as Ultralytics' detectors put out."""
    return len(shape) == 3 and (shape[1] or 0) >= 5 and (shape[2] or 0) >= 8 * shape[1]


def _looks_like_detector(name: str, shape: tuple) -> str:
    return (f"output {name} {tuple(shape)} has the shape of an Ultralytics detector's (N, 4+C, A): it is gated by "
            f"SQNR of its parts, not by its detections; say --task detect (or {name} = \"detect\" in --outputs) to "
            "judge the boxes an app would draw")


def embed_by_values(tasks: dict[str, str], reference: dict[str, np.ndarray], decided: set[str]) -> dict[str, str]:
    """Outputs nobody named whose rows are all L2-normalised become `embed` (cosine, nearest-neighbour agreement),
    not class scores: an embedding's argmax means nothing."""
    return {name: "embed" if name not in decided and task != "detect" and is_normalized(reference[name]) else task
            for name, task in tasks.items()}


def detectors(shapes: dict[str, tuple], tasks: dict[str, str], settings: Detect,
              metadata: dict[str, str] | None = None) -> tuple[tuple[Detector, ...], list[str]]:
    """How each detect output is read: the layout (given, or from the shapes), and the warnings of a guess."""
    wanted = [name for name, task in tasks.items() if task == "detect"]
    if not wanted:
        return (), []
    names = _class_names(metadata)
    if settings.layout == "boxes-scores" or (settings.layout == "auto" and len(wanted) == 2):
        return (_pair(wanted, shapes, settings, names),), []
    found, warnings = [], []
    for name in wanted:
        layout, warning = _layout(name, tuple(shapes[name]), settings.layout)
        found.append(Detector(layout, (name,), settings.confidence, settings.iou, names))
        warnings += [warning] if warning else []
    return tuple(found), warnings


def _layout(name: str, shape: tuple, layout: str) -> tuple[str, str | None]:
    hint = ('write [detect] layout = "ultralytics" | "ultralytics-t" | "yolov5" | "boxes-scores" in the --outputs '
            "file (docs/outputs.md)")
    if len(shape) != 3 or min(shape[1] or 0, shape[2] or 0) < 5:
        raise ConfigError(f"output {name} {shape} is not a detector output edgekit can read", hint=hint)
    if layout != "auto":
        return layout, None
    if shape[1] < shape[2]:
        return "ultralytics", None
    return "ultralytics-t", (f"output {name} {shape} read as (N, anchors, 4 box + {shape[2] - 4} class scores); a "
                             'YOLOv5 output (objectness in column 4) needs [detect] layout = "yolov5" in --outputs')


def _pair(wanted: list[str], shapes: dict[str, tuple], settings: Detect, names: tuple[str, ...]) -> Detector:
    boxes = [n for n in wanted if len(shapes[n]) == 3 and shapes[n][2] == 4][:1]  # four classes: the first is boxes
    scores = [n for n in wanted if n not in boxes and len(shapes[n]) == 3]
    if len(wanted) != 2 or len(boxes) != 1 or len(scores) != 1 or shapes[boxes[0]][1] != shapes[scores[0]][1]:
        raise ConfigError(f"detect outputs {', '.join(wanted)} are not boxes (N, A, 4) beside scores (N, A, C)",
                          hint="name the two outputs detect in --outputs, or give one Ultralytics/YOLOv5 output")
    return Detector("boxes-scores", (boxes[0], scores[0]), settings.confidence, settings.iou, names)


def _class_names(metadata: dict[str, str] | None) -> tuple[str, ...]:
    """Ultralytics' `names` ("{0: 'person', ...}", a literal parsed as data, or config.txt's JSON) indexed by class
    id ("" where an id has no name); () when absent or unreadable."""
    raw = (metadata or {}).get("names")
    if not isinstance(raw, str) or len(raw) >= 1 << 16:
        return ()
    value = None
    for parse in (ast.literal_eval, json.loads):
        try:
            value = parse(raw)
            break
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            continue
    if isinstance(value, list):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        return ()
    ids = {}
    for key, name in value.items():
        try:
            ids[int(key)] = str(name)
        except (TypeError, ValueError):
            return ()
    if not ids or min(ids) < 0 or max(ids) > MAX_CLASS_ID:
        return ()
    return tuple(ids.get(i, "") for i in range(max(ids) + 1))


def _scores_shape(shape: tuple, labels: np.ndarray | None = None) -> bool:
    return is_scores(shape, () if labels is None else tuple(np.shape(labels)[1:]))


def _hinted(name: str) -> str | None:
    lowered = name.lower()
    if re.fullmatch(r"output(_\d+)?", lowered):
        return None
    for task, pattern in HINTS:
        if pattern.search(lowered):
            return task
    return None


def scores_output(tasks: dict[str, str]) -> str | None:
    """The first classify output: accuracy against labels is taken on it."""
    return next((name for name, task in tasks.items() if task == "classify"), None)
