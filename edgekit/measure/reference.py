"""The reference a device model is measured against: PyTorch itself, or the ONNX file for models given as ONNX."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edgekit.cache import store as step_cache
from edgekit.cache.keys import arrays_key, fetch_arrays, model_key, step_key, store_arrays
from edgekit.inputs.plan import Plan
from edgekit.runners.base import Runner
from edgekit.runners.onnxrt import OnnxRunner
from edgekit.runners.torch import TorchRunner
from edgekit.transform.export import OnnxExport


def reference_runner(plan: Plan, export: OnnxExport) -> Runner:
    """PyTorch itself where there is a torch model; the ONNX file for models given as ONNX."""
    names = [s.name for s in plan.inputs]
    outputs = [o.name for o in export.outputs]
    if plan.model.is_torch:
        batch = 1 if plan.model.kind == "exported_program" else 64
        return TorchRunner(plan.model.module, names, outputs, batch_size=batch)
    # the exported copy of this very file; a model compressed on its initializers is compared with the original
    return OnnxRunner(export.path if export.source == plan.model.onnx_path else plan.model.onnx_path)


def reference_outputs(model: Any, inputs: dict[str, np.ndarray], output_names: list[str],
                      run: Any) -> tuple[dict[str, np.ndarray], bool]:
    """`run()` (the reference model on the eval inputs), or its outputs cached from a build of the same model on
    the same inputs; True when cached."""
    if step_cache.cache_root() is None:
        return run(), False
    key = step_key("reference", model_key(model), arrays_key(inputs), json.dumps(output_names))
    cached = fetch_arrays("reference", key) if key is not None else None
    if cached is not None and sorted(cached) == sorted(output_names):
        return cached, True
    outputs = run()
    if key is not None:
        store_arrays("reference", key, outputs)
    return outputs, False
