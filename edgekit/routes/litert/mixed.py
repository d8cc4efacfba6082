"""Mixed-range outputs: a Concat that joins tensors of very different ranges (boxes in pixels with scores in
0..1) would share one INT8 scale and wipe out the small ones. Such concats are found on the calibration data and
kept in float, so each input keeps its own quantization parameters. A Concat that joins such a concat's output
(through reshapes and transposes: a detector's per-scale heads joined along the anchors) carries the same mixed
rows, so it stays in float too: in INT8 its one scale would wipe out the scores again at the very output."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RANGE_RATIO = 16.0  # inputs whose max |x| differ this much cannot share one INT8 scale
_SHAPE_ONLY = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def mixed_range_concats(onnx_path: Path, samples: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """ONNX Concat outputs whose inputs' ranges differ by more than RANGE_RATIO, with those ranges; the concats that
    join their outputs, with none."""
    import onnx

    from edgekit.routes.calibrate import onnx_values

    graph = onnx.load(str(onnx_path)).graph
    concats = [n for n in graph.node if n.op_type == "Concat"]
    if not concats:
        return {}
    wanted = {name for node in concats for name in node.input} - {i.name for i in (*graph.initializer, *graph.input)}
    peaks_of: dict[str, float] = {}
    for values in onnx_values(onnx_path, samples, wanted, 8):  # only the Concat inputs, 8 samples at a time
        for name, array in values.items():
            if array.size:
                peaks_of[name] = max(peaks_of.get(name, 0.0), float(np.max(np.abs(array))))
    found = {}
    for node in concats:
        peaks = [peaks_of[i] for i in node.input if i in peaks_of]
        positive = [p for p in peaks if p > 0]
        if len(positive) >= 2 and max(positive) / min(positive) > RANGE_RATIO:
            found[node.output[0]] = peaks
    return _joined(graph, concats, found, peaks_of)


def _joined(graph, concats: list, found: dict[str, list[float]], peaks_of: dict[str, float]) -> dict:
    """`found` with every Concat that joins a found concat's output (through shape-only ops), to a fixed point."""
    producers = {out: node for node in graph.node for out in node.output}

    def source(name: str) -> str:
        node = producers.get(name)
        while node is not None and node.op_type in _SHAPE_ONLY:
            name = node.input[0]
            node = producers.get(name)
        return name

    changed = True
    while changed:
        changed = False
        for node in concats:
            if node.output[0] not in found and any(source(i) in found for i in node.input):
                found[node.output[0]] = []  # no ranges of its own to report: it joins mixed rows
                changed = True
    return found
