"""Joined outputs, measured by part: one tensor whose rows (or channels) are different things — boxes in pixels
beside sigmoid scores — is measured per part, because one SQNR over the whole tensor is the SQNR of its largest part
(a YOLO output's class scores at 5.8 dB hid behind its boxes at 28.9 dB).

Parts come from the task when it names them (a detector's layout: boxes, objectness, scores), else from the values:
the rows along axis 1 (or the last axis) that split into two contiguous runs whose ranges differ by at least
RANGE_RATIO (every row on one side reaches at least RANGE_RATIO times the largest row of the other).
"""

from __future__ import annotations

import numpy as np

RANGE_RATIO = 16.0


def split_by_range(reference: np.ndarray) -> list[tuple[str, int, int, int]] | None:
    """Two parts (name, axis, start, stop) when the rows along axis 1 or the last axis fall into two runs of very
    different range; the axis with the wider separation wins; None when the tensor is one thing."""
    if reference.ndim < 2:
        return None
    found = []
    for axis in sorted({1, reference.ndim - 1}):
        rows = np.moveaxis(np.abs(reference.astype(np.float64)), axis, 0).reshape(reference.shape[axis], -1)
        if len(rows) < 2 or rows.shape[1] < 2:
            continue
        ranges = rows.max(1)
        boundary, ratio = _best_boundary(ranges)
        if ratio >= RANGE_RATIO:
            found.append((ratio, axis, boundary))
    if not found:
        return None
    _, axis, boundary = max(found)
    size = reference.shape[axis]
    return [(f"{_axis_word(axis, reference.ndim)} 0-{boundary - 1}", axis, 0, boundary),
            (f"{_axis_word(axis, reference.ndim)} {boundary}-{size - 1}", axis, boundary, size)]


def _best_boundary(ranges: np.ndarray) -> tuple[int, float]:
    """The split of `ranges` into a prefix and a suffix whose smaller side's largest value is furthest below the
    larger side's smallest value."""
    best = (0, 0.0)
    for boundary in range(1, len(ranges)):
        left, right = ranges[:boundary], ranges[boundary:]
        low, high = (left, right) if left.max() <= right.max() else (right, left)
        ratio = float(high.min()) / float(low.max()) if low.max() > 0 else (np.inf if high.min() > 0 else 0.0)
        if ratio > best[1]:
            best = (boundary, ratio)
    return best


def _axis_word(axis: int, ndim: int) -> str:
    return "rows" if axis == 1 and ndim == 3 else "channels" if axis == 1 else "columns"


def take(array: np.ndarray, part: tuple[str, int, int, int]) -> np.ndarray:
    _, axis, start, stop = part
    return np.take(array, np.arange(start, stop), axis=axis)


def is_normalized(reference: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Rows L2-normalised: every sample's vector (an (N, D) output) of norm 1 within rounding — and not
    probabilities (a confident softmax is near one-hot, whose L2 norm is near 1 too)."""
    if reference.ndim != 2 or reference.shape[1] < 2 or not len(reference):
        return False
    rows = reference.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    probabilities = bool(np.all(rows >= 0)) and bool(np.all(np.abs(rows.sum(1) - 1.0) <= tolerance))
    return bool(np.all(np.abs(norms - 1.0) <= tolerance)) and not probabilities


def neighbour_agreement(reference: np.ndarray, device: np.ndarray, tie: float = 1e-3) -> float | None:
    """The share of samples whose nearest other sample (by cosine) on the device is their nearest in the
    reference, or within `tie` of it in the reference's own similarity (a swap of near-equal neighbours is no
    change in what the app finds). None with fewer than 3 samples."""
    if len(reference) < 3:
        return None
    ref, dev = _unit(reference), _unit(device)
    ref_sim, dev_sim = ref @ ref.T, dev @ dev.T
    np.fill_diagonal(ref_sim, -np.inf)
    np.fill_diagonal(dev_sim, -np.inf)
    chosen = dev_sim.argmax(1)
    best = ref_sim.max(1)
    kept = ref_sim[np.arange(len(ref)), chosen] >= best - tie
    return round(float(np.mean(kept)), 6)


def _unit(array: np.ndarray) -> np.ndarray:
    flat = np.nan_to_num(array.reshape(len(array), -1).astype(np.float64))
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norms > 0, norms, 1.0)
