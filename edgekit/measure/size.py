"""Sizes of device models as they travel (gzip at the highest level, with a fixed mtime: the same bytes every run),
and what a weight tensor holds (sparsity, distinct values)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def gzip_size(path: Path) -> int:
    return gzip_bytes(Path(path).read_bytes())


def gzip_bytes(data: bytes) -> int:
    """The gzip -9 size of `data` (a device model in several files is gzipped as their concatenation)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def weight_stats(name: str, array: np.ndarray) -> dict:
    """Sparsity (fraction of exact zeros) and number of distinct non-zero values of one weight tensor."""
    values = np.asarray(array)
    nonzero = values[values != 0]
    return {"name": name, "shape": list(values.shape), "dtype": str(values.dtype),
            "sparsity": float(1.0 - nonzero.size / max(values.size, 1)), "distinct": int(np.unique(nonzero).size)}
