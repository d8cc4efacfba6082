"""Mixed-range outputs: a Concat that joins tensors of very different ranges (boxes in pixels with scores in
0..1) would share one INT8 scale and wipe out the small ones. Such concats are found on the calibration data and
kept in float, so each input keeps its own quantization parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np

RANGE_RATIO = 16.0  # inputs whose max |x| differ this much cannot share one INT8 scale


def mixed_range_concats(onnx_path: Path, samples: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """ONNX Concat outputs whose inputs' ranges differ by more than RANGE_RATIO, with those ranges."""
    import onnx

    from edgekit.steps.calibrate import onnx_values

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
    return found
