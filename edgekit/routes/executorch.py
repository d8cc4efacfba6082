"""The ExecuTorch route: PyTorch's own on-device runtime, for Android (and other ARM64) apps.

torch.export, then for INT8 the PT2E flow with ExecuTorch's XNNPACK quantizer (INT8 weights symmetric per channel,
INT8 activations per tensor, calibrated by running the calibration data through the prepared model), then lowering
with the XNNPACK partitioner to a `.pte` program. Which ops XNNPACK took and which stay on ExecuTorch's portable
kernels is reported. Drift is measured with ExecuTorch's Python runtime on the host. The emulator is not offered:
the runtime's Python binding links libtorch, so the guest would need an aarch64 torch beside it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgekit.routes import Route
from edgekit.runners.executorch import quiet_imports

BUNDLE_NAME = "model.pte"


class ExecuTorchRoute(Route):
    name = "executorch"
    runtime = "executorch"
    extra = "executorch"
    requires = ("executorch", "torchao")

    methods = ("minmax",)  # the XNNPACK quantizer's own observers
    converted_by = "ExecuTorch's XNNPACK partitioner"

    def check_request(self, plan) -> None:
        from edgekit.errors import UnsupportedError

        if plan.model.kind not in ("exported_program", "module"):
            raise UnsupportedError(f"route executorch converts torch.export programs and nn.Modules, not a "
                                   f"{plan.model.kind} model", hint="give the model as .pt2 or module:factory")
        super().check_request(plan)

    def build(self, plan, export, workdir: Path):
        from edgekit.device import DeviceModel, onnx_bindings
        from edgekit.runners.executorch import ExecuTorchRunner

        workdir.mkdir(parents=True, exist_ok=True)
        example = _example(plan)
        names, outputs = [s.name for s in plan.inputs], [o.name for o in export.outputs]
        float_pte, float_notes = lower(plan.model.module, example, workdir / "model.fp32.pte")
        quantized = plan.target.precision == "int8"
        path, notes = (lower(quantize(plan, example), example, workdir / BUNDLE_NAME) if quantized
                       else (float_pte, float_notes))
        return DeviceModel(
            path=path, bundle_name=BUNDLE_NAME, float_path=float_pte, runtime=_runtime(quantized),
            bindings=onnx_bindings(export),
            open_runner=lambda p: ExecuTorchRunner(p, names, outputs),
            open_float_runner=lambda: ExecuTorchRunner(float_pte, names, outputs),
            notes=[*notes, "per-layer drift is not measured on route executorch yet"] if quantized else notes,
        )


def _example(plan) -> tuple:
    import torch

    return tuple(torch.from_numpy(plan.calibration.inputs[s.name][:1].copy()) for s in plan.inputs)


def quantize(plan, example: tuple):
    """PT2E with the XNNPACK quantizer: prepare, run the calibration data through, convert."""
    import torch

    with quiet_imports():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(plan.model.module, example).module(), quantizer)
        inputs = plan.calibration.take(slice(0, plan.options.calibration.max_samples)).inputs
        with torch.no_grad():
            for i in range(len(next(iter(inputs.values())))):
                prepared(*(torch.from_numpy(inputs[s.name][i:i + 1].copy()) for s in plan.inputs))
        return convert_pt2e(prepared)


def lower(module, example: tuple, out: Path) -> tuple[Path, list[str]]:
    """torch.export -> XNNPACK-delegated ExecuTorch program at `out`, and a note on what XNNPACK took."""
    import torch

    with quiet_imports():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        edge = to_edge_transform_and_lower(torch.export.export(module, example), partitioner=[XnnpackPartitioner()])
        program = edge.to_executorch()
    out.write_bytes(program.buffer)
    return out, [delegation_note(edge.exported_program().graph_module)]


def delegation_note(graph_module) -> str:
    """Which ops run inside the XNNPACK delegate and which stay on ExecuTorch's portable kernels."""
    outside = Counter(str(node.target).split(".")[-2] if "." in str(node.target) else str(node.target)
                      for node in graph_module.graph.nodes if node.op == "call_function"
                      and "executorch_call_delegate" not in str(node.target) and "getitem" not in str(node.target))
    delegates = sum(1 for node in graph_module.graph.nodes if "executorch_call_delegate" in str(node.target))
    if not outside:
        return f"executorch: every op runs in XNNPACK ({delegates} delegated subgraph(s), no portable kernels)"
    rest = ", ".join(f"{op} x{count}" for op, count in sorted(outside.items()))
    return f"executorch: {delegates} XNNPACK subgraph(s); on portable kernels: {rest}"


def _runtime(quantized: bool) -> dict:
    from importlib.metadata import version

    return {"name": "executorch", "version": version("executorch"), "where": "host-x86_64 (ExecuTorch runtime)",
            "converter": "executorch (PT2E, XNNPACK)" if quantized else "executorch (XNNPACK)",
            "converter_version": version("executorch")}


ROUTE = ExecuTorchRoute()
