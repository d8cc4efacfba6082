"""`edgekit inspect`: ops, dtypes, sizes, sparsity and I/O of a .tflite, .onnx, torch model or a bundle."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgekit.errors import ModelError
from edgekit.measure.size import weight_stats
from edgekit.routes import route_reading


def inspect_path(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        return _inspect_bundle(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist", hint="give a .tflite, .onnx, .pt2, .pt file or a bundle folder")
    readers = {".onnx": _inspect_onnx, ".pt2": _inspect_torch, ".pt": _inspect_torch, ".ts": _inspect_torch}
    route = route_reading(path.suffix.lower())  # a device format: its route reads it
    reader = route.inspect if route is not None else readers.get(path.suffix.lower())
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


def _inspect_onnx(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    from edgekit.inputs.model import onnx_value_spec

    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}
    return {"format": "onnx", "opset": [f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import],
            "inputs": [onnx_value_spec(v).to_dict() for v in model.graph.input if v.name not in initializers],
            "outputs": [onnx_value_spec(v).to_dict() for v in model.graph.output],
            "ops": dict(Counter(n.op_type for n in model.graph.node)),
            "weights": [weight_stats(i.name, numpy_helper.to_array(i)) for i in model.graph.initializer
                        if len(i.dims) >= 2]}


def _inspect_torch(path: Path) -> dict:
    from edgekit.inputs.model import load_model

    model = load_model(path)
    params = [weight_stats(n, p.detach().numpy()) for n, p in model.module.named_parameters() if p.dim() >= 2]
    return {"format": model.kind, "inputs": [s.to_dict() for s in model.inputs or ()], "outputs": [],
            "parameters": int(sum(np.prod(w["shape"]) for w in params)), "weights": params}


def _inspect_bundle(folder: Path) -> dict:
    """The device model of a verified bundle (paths inside it, files as built), with the bundle's verdict."""
    from edgekit.bundle.check import open_bundle

    opened = open_bundle(folder)
    manifest, drift = opened.manifest, opened.report["drift"]
    info = inspect_path(opened.verified.model)
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    info["bundle"] = {"target": opened.report["target"], "passed": drift["passed"],
                      "accuracy_drop": drift["accuracy_drop"], "top1_agreement": drift["top1_agreement"],
                      "model_sha256": model.get("sha256"), "created": manifest.get("created"),
                      "git_sha": manifest.get("git_sha")}
    return info
