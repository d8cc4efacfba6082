"""`edgekit inspect`: ops, dtypes, sizes, sparsity and I/O of a .tflite, .onnx, torch model or a bundle."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgekit.errors import ModelError


def weight_stats(name: str, array: np.ndarray) -> dict:
    """Sparsity (fraction of exact zeros) and number of distinct non-zero values of one weight tensor."""
    values = np.asarray(array)
    nonzero = values[values != 0]
    return {"name": name, "shape": list(values.shape), "dtype": str(values.dtype),
            "sparsity": float(1.0 - nonzero.size / max(values.size, 1)), "distinct": int(np.unique(nonzero).size)}


def inspect_path(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        return _inspect_bundle(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist", hint="give a .tflite, .onnx, .pt2, .pt file or a bundle folder")
    readers = {".tflite": _inspect_tflite, ".onnx": _inspect_onnx, ".pt2": _inspect_torch, ".pt": _inspect_torch,
               ".ts": _inspect_torch}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ModelError(f"cannot inspect {path.suffix!r} files", hint="use .tflite, .onnx, .pt2, .pt or a bundle")
    try:
        contents = reader(path)
    except ModelError:
        raise
    except Exception as exc:  # each reader's library has its own errors for a damaged file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"{path} is not a readable {path.suffix} model: {reason}",
                         hint="check the file (a damaged download or another format under this name?)") from None
    return {"path": str(path), "bytes": path.stat().st_size, **contents}


def _inspect_tflite(path: Path) -> dict:
    from edgekit.runners.litert import open_interpreter

    interpreter = open_interpreter(path)
    ops = Counter(op["op_name"] for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE")
    io = {"inputs": [_tensor(t) for t in interpreter.get_input_details()],
          "outputs": [_tensor(t) for t in interpreter.get_output_details()]}
    return {"format": "tflite", **io, "ops": dict(ops), "weights": tflite_weights(path)}


def tflite_weights(path: Path) -> list[dict]:
    """Constant tensors of rank >= 2 (weights: read by an op, written by none) with sparsity and distinct values."""
    from edgekit.runners.litert import open_interpreter

    interpreter = open_interpreter(path)
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    produced = {int(i) for op in ops for i in op["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    constants = {int(i) for op in ops for i in op["inputs"] if i >= 0} - produced - graph_inputs
    return [weight_stats(d["name"], interpreter.get_tensor(d["index"])) for d in interpreter.get_tensor_details()
            if d["index"] in constants and len(d["shape"]) >= 2]


def _tensor(detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    return {"name": detail["name"], "shape": [int(d) for d in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}


def _inspect_onnx(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    from edgekit.model import onnx_value_spec

    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}
    return {"format": "onnx", "opset": [f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import],
            "inputs": [onnx_value_spec(v).to_dict() for v in model.graph.input if v.name not in initializers],
            "outputs": [onnx_value_spec(v).to_dict() for v in model.graph.output],
            "ops": dict(Counter(n.op_type for n in model.graph.node)),
            "weights": [weight_stats(i.name, numpy_helper.to_array(i)) for i in model.graph.initializer
                        if len(i.dims) >= 2]}


def _inspect_torch(path: Path) -> dict:
    from edgekit.model import load_model

    model = load_model(path)
    params = [weight_stats(n, p.detach().numpy()) for n, p in model.module.named_parameters() if p.dim() >= 2]
    return {"format": model.kind, "inputs": [s.to_dict() for s in model.inputs or ()], "outputs": [],
            "parameters": int(sum(np.prod(w["shape"]) for w in params)), "weights": params}


def _inspect_bundle(folder: Path) -> dict:
    """The device model of a verified bundle (paths inside it, files as built), with the bundle's verdict."""
    from edgekit.checking import open_bundle

    opened = open_bundle(folder)
    manifest, drift = opened.manifest, opened.report["drift"]
    info = inspect_path(opened.verified.model)
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    info["bundle"] = {"target": opened.report["target"], "passed": drift["passed"],
                      "accuracy_drop": drift["accuracy_drop"], "top1_agreement": drift["top1_agreement"],
                      "model_sha256": model.get("sha256"), "created": manifest.get("created"),
                      "git_sha": manifest.get("git_sha")}
    return info
