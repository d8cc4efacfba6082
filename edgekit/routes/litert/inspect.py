"""`edgekit inspect` of a .tflite: what the LiteRT route reads of its own device format."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgekit.measure.size import weight_stats
from edgekit.routes.litert.runner import open_interpreter
from edgekit.routes.litert.weights import weight_details


def inspect_tflite(path: Path) -> dict:
    """`edgekit inspect` of a .tflite: I/O with quantization, op counts, and each weight's sparsity and values."""
    interpreter = open_interpreter(path)
    ops = Counter(op["op_name"] for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE")
    io = {"inputs": [_tensor(t) for t in interpreter.get_input_details()],
          "outputs": [_tensor(t) for t in interpreter.get_output_details()]}
    return {"format": "tflite", **io, "ops": dict(ops), "weights": tflite_weights(path)}


def tflite_weights(path: Path) -> list[dict]:
    """Constant tensors of rank >= 2 (weights: read by an op, written by none) with sparsity and distinct values."""
    interpreter = open_interpreter(path)
    return [weight_stats(d["name"], interpreter.get_tensor(d["index"])) for d in weight_details(interpreter)]


def _tensor(detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}
