"""Sparsity-preserving weight clustering: every output channel of a layer ends up with at most k distinct non-zero
values, found by 1-D k-means; exact zeros stay zero and are not one of the k values.

Codebooks (Cluster.codebook):
- "shared" (default): one codebook of k values for the whole layer, on weights divided by their output channel's
  largest |w|. ±1 are kept as centroids, so every channel keeps its largest |w| and per-channel INT8 gives all
  channels the same <= k codes; the centroids are put on that INT8 grid (multiples of 1/127), so INT8 reproduces
  them exactly. This is what makes the INT8 file compress well (gzip sees one small alphabet).
- "channel": an independent k-means per output channel (most accurate in float, compresses less in INT8).
- "tensor": one k-means over the whole tensor.
The k-means is Lloyd's algorithm on scalars with quantile initialisation: deterministic, no random restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.transform.compress.prune import chosen_values
from edgekit.transform.compress.scope import Decision, StepReport

ITERATIONS = 60
INT8_LEVELS = 127  # symmetric per-channel INT8: w = code * max|w| / 127


@dataclass(frozen=True)
class Clustering:
    """How a clustered weight is tied together, for recovery to keep it so: the cluster of every weight (-1 at
    zeros), whether labels count per output channel, and for a shared codebook each channel's scale."""

    labels: np.ndarray
    per_row: bool
    scales: np.ndarray | None = None


def kmeans_1d(values: np.ndarray, k: int, fixed: tuple[float, ...] = (),
              iterations: int = ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """(centroids ascending, label of each value): at most k centroids, each the mean of its values, except the
    `fixed` ones, which stay where they are."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    distinct = np.unique(values)
    if distinct.size <= k and set(fixed) <= set(distinct.tolist()):
        return distinct, np.searchsorted(distinct, values)
    ordered = np.sort(values)
    free = k - len(fixed)
    centroids = np.unique(np.concatenate([np.quantile(ordered, (np.arange(free) + 0.5) / free) if free else [],
                                          fixed]))
    for _ in range(iterations):
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, ordered)
        updated = _pin(_means(ordered, labels, centroids), centroids, fixed)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
    used, labels = np.unique(labels, return_inverse=True)
    return _pin(_means(values, labels, centroids[used]), centroids[used], fixed), labels


def _means(values: np.ndarray, labels: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Mean of each cluster; an empty cluster keeps its previous centroid."""
    sums = np.bincount(labels, weights=values, minlength=previous.size)
    counts = np.bincount(labels, minlength=previous.size)
    return np.where(counts > 0, sums / np.maximum(counts, 1), previous)


def _pin(centroids: np.ndarray, previous: np.ndarray, fixed: tuple[float, ...]) -> np.ndarray:
    return np.where(np.isin(previous, fixed), previous, centroids) if fixed else centroids


def on_int8_grid(normalised: np.ndarray) -> np.ndarray:
    """Centroids (relative to the channel's largest |w|) rounded to the nearest non-zero INT8 level."""
    codes = np.round(normalised * INT8_LEVELS)
    return np.where(codes == 0, np.sign(normalised), codes) / INT8_LEVELS


def cluster_array(weight: np.ndarray, k: int, codebook: str = "shared") -> tuple[np.ndarray, Clustering]:
    """Clustered copy of `weight` (axis 0 = output channels) and how it is tied together."""
    if codebook == "shared":
        return _cluster_shared(weight, k)
    rows = weight.reshape(weight.shape[0] if codebook == "channel" else 1, -1)
    clustered = np.zeros_like(rows)
    labels = np.full(rows.shape, -1, dtype=np.int64)
    for row in range(rows.shape[0]):
        nonzero = rows[row] != 0
        if nonzero.any():
            centroids, row_labels = kmeans_1d(rows[row][nonzero], k)
            clustered[row][nonzero] = centroids.astype(weight.dtype)[row_labels]
            labels[row][nonzero] = row_labels
    return clustered.reshape(weight.shape), Clustering(labels.reshape(weight.shape), codebook == "channel")


def _cluster_shared(weight: np.ndarray, k: int) -> tuple[np.ndarray, Clustering]:
    rows = weight.reshape(weight.shape[0], -1).astype(np.float64)
    scales = np.abs(rows).max(axis=1)
    normalised = rows / np.where(scales > 0, scales, 1.0)[:, None]
    nonzero = rows != 0
    centroids, found = kmeans_1d(normalised[nonzero], k, fixed=(-1.0, 1.0))
    centroids, found = np.unique(on_int8_grid(centroids), return_inverse=True)[0], _relabel(centroids, found)
    labels = np.full(rows.shape, -1, dtype=np.int64)
    labels[nonzero] = found
    clustered = np.where(nonzero, centroids[np.maximum(labels, 0)] * scales[:, None], 0.0)
    return clustered.astype(weight.dtype).reshape(weight.shape), Clustering(labels.reshape(weight.shape), False,
                                                                             scales.astype(weight.dtype))


def _relabel(centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Labels after centroids that land on the same grid level are merged."""
    return np.unique(on_int8_grid(centroids), return_inverse=True)[1][labels]


def max_distinct(array: np.ndarray, out_axis: int = 0) -> int:
    """The largest number of distinct non-zero values in one output channel."""
    rows = np.moveaxis(np.asarray(array), out_axis, 0).reshape(np.shape(array)[out_axis], -1)
    return max((int(np.unique(row[row != 0]).size) for row in rows), default=0)


def cluster_weights(module: Any, decisions: dict[str, Decision], codebook: str = "shared") -> tuple[
        StepReport, dict[str, Clustering]]:
    """Cluster the weights of every chosen layer in place; returns the report and each layer's Clustering."""
    import torch

    report = StepReport()
    tied: dict[str, Clustering] = {}
    for name, k in chosen_values(decisions, report, "clusters").items():
        weight = module.get_submodule(name).weight
        clustered, tied[name] = cluster_array(weight.detach().cpu().numpy(), int(k), codebook)
        with torch.no_grad():
            weight.copy_(torch.from_numpy(clustered))
        report.applied[name] = {"clusters": int(k), "codebook": codebook, "max_distinct": max_distinct(clustered),
                                "rule": decisions[name].rule}
    return report, tied
