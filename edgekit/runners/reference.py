"""The reference a device model is measured against: PyTorch itself, or the ONNX file for models given as ONNX."""

from __future__ import annotations

from edgekit.plan import Plan
from edgekit.runners.base import Runner
from edgekit.runners.onnxrt import OnnxRunner
from edgekit.runners.torch import TorchRunner
from edgekit.steps.export_onnx import OnnxExport


def reference_runner(plan: Plan, export: OnnxExport) -> Runner:
    """PyTorch itself where there is a torch model; the ONNX file for models given as ONNX."""
    names = [s.name for s in plan.inputs]
    outputs = [o.name for o in export.outputs]
    if plan.model.is_torch:
        batch = 1 if plan.model.kind == "exported_program" else 64
        return TorchRunner(plan.model.module, names, outputs, batch_size=batch)
    # the exported copy of this very file; a model compressed on its initializers is compared with the original
    return OnnxRunner(export.path if export.source == plan.model.onnx_path else plan.model.onnx_path)
