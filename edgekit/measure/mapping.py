"""Matching device tensors to model tensors by name where kept, else by shape and a numeric cross-check.

Converters drop or change tensor names and reorder outputs; position is never trusted.
"""

from __future__ import annotations

import numpy as np

from edgekit.errors import ConversionError


def channels_last(rank: int) -> tuple[int, ...] | None:
    """The permutation NC... -> N...C that onnx2tf applies to inputs and outputs of rank 3 to 5."""
    return (0, *range(2, rank), 1) if 3 <= rank <= 5 else None


def layout_candidates(model_shape: tuple[int, ...], device_shape: tuple[int, ...]) -> list[tuple[int, ...] | None]:
    """Permutations (model -> device) under which the two shapes agree, the converter's convention first."""
    found: list[tuple[int, ...] | None] = []
    perm = channels_last(len(model_shape))
    if perm and tuple(model_shape[p] for p in perm) == tuple(device_shape):
        found.append(perm)
    if tuple(model_shape) == tuple(device_shape):
        found.append(None)
    return found


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    denominator = float(np.linalg.norm(reference)) or 1.0
    return float(np.linalg.norm(reference.astype(np.float64) - candidate)) / denominator


Match = tuple[int, tuple[int, ...] | None, float]  # device output index, model->device permutation, error


def match_outputs(reference: dict[str, np.ndarray], device: dict[int, np.ndarray]) -> dict[str, Match]:
    """For each reference output, the device output index and permutation closest to it (greedy, one-to-one).

    `device` arrays are raw device outputs (decoded to float, device layout), stacked over the same samples.
    Shape decides; among outputs of the same shape, the smallest relative error does.
    """
    scored = []
    for name, ref in reference.items():
        for index, dev in device.items():
            for perm in layout_candidates((1, *ref.shape[1:]), (1, *dev.shape[1:])):
                view = dev.transpose(np.argsort(perm)) if perm else dev
                scored.append((relative_error(ref, view), name, index, perm))
    chosen: dict[str, Match] = {}
    used: set[int] = set()
    for error, name, index, perm in sorted(scored, key=lambda s: s[0]):
        if name not in chosen and index not in used:
            chosen[name] = (index, perm, error)
            used.add(index)
    missing = [n for n in reference if n not in chosen]
    if missing:
        raise ConversionError(f"cannot match device output(s) to model output(s) {', '.join(missing)}: no device "
                              f"output has the same shape and values", hint="report this model to edgekit")
    return chosen
