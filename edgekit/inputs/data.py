"""Calibration and evaluation data: loading from every accepted form, and validation against the model inputs."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError
from edgekit.inputs.model import TensorSpec
from edgekit.standalone.check import CheckError, npz_declared
from edgekit.utils.user_code import call_user

LABEL_KEY = "y"
BOX_KEYS = ("boxes", "box_classes", "box_image")  # a detector's ground truth (docs/outputs.md)


@dataclass(frozen=True)
class Boxes:
    """Ground-truth boxes of a detector's eval data: corners (M, 4) x1, y1, x2, y2 in the model input's pixels,
    class (M,), and the index of the sample each box belongs to (M,)."""

    corners: np.ndarray
    classes: np.ndarray
    image: np.ndarray

    def take(self, index: np.ndarray | slice, count: int) -> Boxes:
        """The boxes of samples `index` (of `count`), renumbered to their new positions."""
        chosen = np.arange(count)[index]
        position = np.full(count, -1, np.int64)
        position[chosen] = np.arange(len(chosen))
        keep = position[self.image] >= 0
        return Boxes(self.corners[keep], self.classes[keep], position[self.image[keep]])


@dataclass(frozen=True)
class Dataset:
    """Samples in the model's own layout (NCHW for images), one array per model input, optional int labels, and
    optional ground-truth boxes for detectors."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    boxes: Boxes | None = None
    file_sha256: str | None = None  # the bytes of the .npz/.npy file it was read from (None: not from one file)

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        extra = [(LABEL_KEY, self.labels)] if self.labels is not None else []
        if self.boxes is not None:
            extra += list(zip(BOX_KEYS, (self.boxes.corners, self.boxes.classes, self.boxes.image)))
        for key, array in sorted(self.inputs.items()) + extra:
            array = np.ascontiguousarray(array)
            digest.update(f"{key}:{array.shape}:{array.dtype}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def take(self, index: np.ndarray | slice) -> Dataset:
        labels = None if self.labels is None else self.labels[index]
        boxes = None if self.boxes is None else self.boxes.take(index, self.size)
        return dataclasses.replace(self, inputs={k: v[index] for k, v in self.inputs.items()}, labels=labels,
                                   boxes=boxes)

    def renamed(self, names: list[str]) -> Dataset:
        """Key the arrays by the model's input names (a single `x` becomes the single input's name)."""
        if list(self.inputs) == ["x"] and len(names) == 1:
            return dataclasses.replace(self, inputs={names[0]: self.inputs["x"]})
        missing = [n for n in names if n not in self.inputs]
        if missing:
            raise DataError(f"{self.source}: no array for model input(s) {', '.join(missing)}",
                            hint=f"give one key per input name ({', '.join(names)}), or `x` for a single input")
        return dataclasses.replace(self, inputs={n: self.inputs[n] for n in names})


def load_data(source: Any, recipe: Path | str | None = None, what: str = "data") -> Dataset:
    """Load `.npz`, `.npy`, a folder of images (with a recipe), `module:callable`, arrays or (x, y) tuples."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, (str, Path)):
        return _load_path(str(source), recipe, what)
    if isinstance(source, np.ndarray):
        return _finish({"x": source}, None, f"<{what} array>", what)
    if isinstance(source, tuple) and len(source) == 2:
        x, y = source
        inputs = dict(x) if isinstance(x, dict) else {"x": np.asarray(x)}
        return _finish(inputs, None if y is None else np.asarray(y), f"<{what} arrays>", what)
    if isinstance(source, dict):
        inputs = {k: np.asarray(v) for k, v in source.items() if k != LABEL_KEY and k not in BOX_KEYS}
        labels = source.get(LABEL_KEY)
        return _finish(inputs, None if labels is None else np.asarray(labels), f"<{what} dict>", what,
                       _boxes({k: source[k] for k in BOX_KEYS if k in source}, f"<{what} dict>", what))
    if callable(source):
        return _from_iterable(source(), f"<{what} callable>", what)
    raise DataError(f"cannot use a {type(source).__name__} as {what}",
                    hint="give an array, an (x, y) tuple, a dict of arrays, or a path to .npz/.npy/an image folder")


def _load_path(text: str, recipe: Path | str | None, what: str) -> Dataset:
    path = Path(text)
    if path.is_dir():
        from edgekit.inputs.images import load_image_folder

        inputs, labels = load_image_folder(path, recipe)
        return _finish(inputs, labels, str(path), what)
    if path.is_file():
        return _load_file(path, what)
    module_name, sep, attr = text.partition(":")
    if sep and attr.isidentifier():
        return _from_iterable(_call(module_name, attr), text, what)
    raise DataError(f"{what} {text} does not exist",
                    hint="give a .npz (x, optional y), a .npy, a folder of images with --recipe, or module:callable")


def _load_file(path: Path, what: str) -> Dataset:
    """An .npz or .npy file, read once: its bytes hashed (the manifest's file_sha256) and parsed from memory, so
    what is hashed is what is used."""
    try:
        if path.suffix not in (".npy", ".npz"):
            raise DataError(f"{what} {path}: unknown data format {path.suffix!r}",
                            hint="use .npz (key x or one key per input name, optional y) or .npy")
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if path.suffix == ".npy":
            array = np.load(io.BytesIO(raw), allow_pickle=False)
            return _finish({"x": array}, None, str(path), what, file_sha256=digest)
        npz_declared(io.BytesIO(raw), path.name)  # every header against what its member holds, before allocating
        with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        labels = arrays.pop(LABEL_KEY, None)
        boxes = {k: arrays.pop(k) for k in BOX_KEYS if k in arrays}
        return _finish(arrays, labels, str(path), what, _boxes(boxes, str(path), what), digest)
    except (OSError, ValueError, CheckError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}", hint="write it with numpy.savez / numpy.save") from exc


def _call(module_name: str, attr: str) -> Any:
    """What the user's callable returns (edgekit/utils/user_code.py: the working directory last on the path)."""
    try:
        return call_user(module_name, attr, lambda function: function())
    except (ImportError, AttributeError) as exc:
        raise DataError(f"cannot import {module_name}:{attr}: {exc}",
                        hint="the module must be importable and define the callable") from exc


def _from_iterable(items: Any, source: str, what: str) -> Dataset:
    samples = list(items)
    if not samples:
        return _finish({}, None, source, what)
    if isinstance(samples[0], dict):
        inputs = {k: np.stack([np.asarray(s[k]) for s in samples]) for k in samples[0]}
    else:
        inputs = {"x": np.stack([np.asarray(s) for s in samples])}
    return _finish(inputs, None, source, what)


def _finish(inputs: dict[str, np.ndarray], labels: np.ndarray | None, source: str, what: str,
            boxes: Boxes | None = None, file_sha256: str | None = None) -> Dataset:
    if not inputs or any(a.size == 0 or a.ndim == 0 for a in inputs.values()):
        raise DataError(f"{what} {source} is empty", hint="give at least one sample (a few hundred for calibration)")
    sizes = {k: len(a) for k, a in inputs.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(f"{what} {source}: inputs have different sample counts {sizes}",
                        hint="every input array needs the same first (batch) dimension")
    inputs = {k: _as_input(k, a, source, what) for k, a in inputs.items()}
    if labels is not None:
        labels = _check_labels(labels, next(iter(sizes.values())), source, what)
    if boxes is not None and len(boxes.image) and int(boxes.image.max()) >= next(iter(sizes.values())):
        raise DataError(f"{what} {source}: box_image names sample {int(boxes.image.max())}, beyond the "
                        f"{next(iter(sizes.values()))} samples", hint="box_image holds each box's sample index, from 0")
    return Dataset(inputs, labels, source, boxes, file_sha256)


def _boxes(arrays: dict[str, np.ndarray], source: str, what: str) -> Boxes | None:
    """Ground-truth boxes from the npz keys boxes (M, 4), box_classes (M,), box_image (M,); all or none."""
    if not arrays:
        return None
    hint = "give boxes (M, 4) float corners x1, y1, x2, y2 in input pixels, box_classes (M,) and box_image (M,) ints"
    if set(arrays) != set(BOX_KEYS):
        raise DataError(f"{what} {source}: ground-truth boxes need all of {', '.join(BOX_KEYS)}", hint=hint)
    corners, classes, image = (np.asarray(arrays[k]) for k in BOX_KEYS)
    count = len(corners) if corners.ndim else -1
    if not np.issubdtype(corners.dtype, np.number) or corners.shape != (count, 4) or \
            classes.shape != (count,) or image.shape != (count,) or \
            not np.issubdtype(classes.dtype, np.integer) or not np.issubdtype(image.dtype, np.integer) or \
            not np.all(np.isfinite(corners)) or (count and (image.min() < 0 or classes.min() < 0)):
        raise DataError(f"{what} {source}: ground-truth boxes of shapes {corners.shape}, {classes.shape}, "
                        f"{image.shape} do not fit together", hint=hint)
    return Boxes(corners.astype(np.float64), classes.astype(np.int64), image.astype(np.int64))


def _as_input(key: str, array: np.ndarray, source: str, what: str) -> np.ndarray:
    """Float data as float32; integer and bool inputs (token ids, masks) keep their dtype: they pass through
    unquantized."""
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"{what} {source}: array {key!r} has dtype {array.dtype}",
                        hint="use float32 arrays (integer or bool arrays for id and mask inputs)")
    array = np.ascontiguousarray(array, dtype=np.float32) if array.dtype != np.float32 else array
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise DataError(f"{what} {source}: array {key!r} holds {bad} NaN/inf values",
                        hint="clean or drop those samples; calibration and drift need finite inputs")
    return array


def _check_labels(labels: np.ndarray, count: int, source: str, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim < 1 or labels.shape[0] != count or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{what} {source}: labels `y` must be {count} integers (or {count} integer maps), got "
                        f"shape {labels.shape} of {labels.dtype}",
                        hint="store class indices as an int array y of shape (N,), or (N, H, W) for per-pixel "
                             "segmentation labels")
    return labels.astype(np.int64)


def validate_against(data: Dataset, specs: tuple[TensorSpec, ...], what: str) -> Dataset:
    """Key the data by input name and check every sample shape against the model's; explain layout mistakes."""
    data = data.renamed([s.name for s in specs])
    for spec in specs:
        array = data.inputs[spec.name]
        if spec.dtype.startswith(("float", "bfloat")) and array.dtype.kind in "iub":
            raise DataError(f"{what} {data.source}: input {spec.name!r} is {spec.dtype} in the model, the data is "
                            f"{array.dtype}", hint="cast it with x.astype(numpy.float32), scaled and normalised as in "
                            "training")
        got = array.shape[1:]
        if not _shape_matches(got, spec.sample_shape):
            raise DataError(_shape_message(spec, got, data.source, what), hint=_shape_hint(spec, got))
    return data


def _shape_matches(got: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want))


def _shape_message(spec: TensorSpec, got: tuple[int, ...], source: str, what: str) -> str:
    want = tuple("?" if d is None else d for d in spec.sample_shape)
    return f"{what} {source}: input {spec.name!r} samples have shape {got}, the model expects {want}"


def _shape_hint(spec: TensorSpec, got: tuple[int, ...]) -> str:
    want = spec.sample_shape
    if len(got) == len(want) >= 3 and _shape_matches(got[-1:] + got[:-1], want):
        axes = ", ".join(["0", str(len(got))] + [str(i) for i in range(1, len(got))])
        return (f"the data looks channels-last; edgekit expects the PyTorch model's own layout (NCHW): "
                f"transpose it with x.transpose({axes})")
    return "give data in the model's own layout and size: (N, " + ", ".join(str(d) for d in want) + ")"


def split_holdout(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split off `fraction` of the samples (at least one) for measuring drift when no eval data is given."""
    if data.size < 2:
        raise DataError(f"{data.source}: {data.size} sample cannot be split into calibration and held-out parts",
                        hint="give more calibration samples or a separate --eval set")
    order = np.random.default_rng(seed).permutation(data.size)
    held = max(1, round(data.size * fraction))
    return data.take(np.sort(order[held:])), data.take(np.sort(order[:held]))
