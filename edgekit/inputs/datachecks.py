"""Calibration data checks that warn (a shape or layout mismatch is an error earlier, in edgekit.inputs.data).

Each check returns sentences for report.json `warnings` and the console, each naming the fix.
"""

from __future__ import annotations

import numpy as np

from edgekit.errors import DataError
from edgekit.inputs.data import Dataset

MIN_CALIBRATION_SAMPLES = 100
# Below this, ranges come from a handful of inputs: on the digits CNN 5 samples gave a quantization SQNR of 24.5 dB
# (1,440 gave 38.5 dB), and the percentile/entropy histograms have nothing to estimate a tail from.
MIN_CALIBRATION_FLOOR = 8
SCALE_RATIO = 4.0  # per-channel std (or mean offset in stds) this far apart means another normalisation


def calibration_warnings(calibration: Dataset, evaluation: Dataset, eval_is_separate: bool,
                         ignore_index: int | None = None) -> list[str]:
    found = too_few(calibration) + duplicates(calibration)
    if eval_is_separate:
        found += normalisation_mismatch(calibration, evaluation)
    return found + label_coverage(calibration, evaluation, ignore_index)


def refuse_small_calibration(data: Dataset, allowed: bool) -> None:
    if data.size < MIN_CALIBRATION_FLOOR and not allowed:
        raise DataError(f"only {data.size} calibration samples (after holding out eval samples): INT8 ranges from "
                        f"fewer than {MIN_CALIBRATION_FLOOR} samples are guesses",
                        hint=f"give at least {MIN_CALIBRATION_SAMPLES} representative samples with --calibration "
                             "(and --eval), or pass --allow-small-calibration to build anyway")


def check_labels(data: Dataset, classes: int | None, ignore_index: int | None, name: str) -> None:
    """Integer labels must name one of the model's classes, or be the ignore label the user named."""
    if data.labels is None or classes is None:
        return
    labels = np.asarray(data.labels)
    bad = (labels < 0) | (labels >= classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        values, counts = np.unique(labels[bad], return_counts=True)
        shown = ", ".join(f"{v} ({c} sample{'s' if c > 1 else ''})" for v, c in zip(values[:5], counts[:5]))
        raise DataError(f"{name}: labels outside the model's {classes} classes (0..{classes - 1}): {shown}",
                        hint="fix the labels y, or name an ignore label left out of accuracy: --ignore-index "
                             f"{int(values[0])}")


def too_few(data: Dataset) -> list[str]:
    if data.size >= MIN_CALIBRATION_SAMPLES:
        return []
    return [f"only {data.size} calibration samples: INT8 ranges need at least {MIN_CALIBRATION_SAMPLES} "
            "representative samples (a few hundred is better); give more with --calibration"]


def duplicates(data: Dataset) -> list[str]:
    rows = np.concatenate([v.reshape(data.size, -1) for v in data.inputs.values()], axis=1)
    unique = len(np.unique(rows, axis=0))
    if unique == data.size:
        return []
    return [f"{data.size - unique} of {data.size} calibration samples are duplicates: they add no range information; "
            "deduplicate the calibration set"]


def channel_stats(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel (axis 1 for inputs of rank >= 3, else one value)."""
    axes = tuple(i for i in range(array.ndim) if i != 1) if array.ndim >= 3 else None
    return np.atleast_1d(array.mean(axis=axes)), np.atleast_1d(array.std(axis=axes))


def normalisation_mismatch(calibration: Dataset, evaluation: Dataset) -> list[str]:
    found = []
    for name, calib in calibration.inputs.items():
        (c_mean, c_std), (e_mean, e_std) = channel_stats(calib), channel_stats(evaluation.inputs[name])
        spread = np.maximum(np.maximum(c_std, e_std), 1e-6)
        ratio = np.maximum(c_std, e_std) / np.maximum(np.minimum(c_std, e_std), 1e-6)
        offset = np.abs(c_mean - e_mean) / spread
        if np.any(ratio > SCALE_RATIO) or np.any(offset > SCALE_RATIO):
            found.append(f"input {name!r}: calibration and eval data look normalised differently (per-channel "
                         f"mean {_fmt(c_mean)} vs {_fmt(e_mean)}, std {_fmt(c_std)} vs {_fmt(e_std)}); preprocess "
                         "both the same way (e.g. both scaled to 0..1), or INT8 ranges will not fit the real inputs")
    return found


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values[:4]) + (", …]" if len(values) > 4 else "]")


def label_coverage(calibration: Dataset, evaluation: Dataset, ignore_index: int | None = None) -> list[str]:
    if calibration.labels is None or evaluation.labels is None:
        return []
    missing = sorted(set(evaluation.labels.tolist()) - set(calibration.labels.tolist()) - {ignore_index})
    if not missing:
        return []
    shown = ", ".join(str(m) for m in missing[:10]) + (" …" if len(missing) > 10 else "")
    return [f"calibration data has no samples of {len(missing)} class(es) present in the eval data ({shown}): "
            "include every class in the calibration set"]
