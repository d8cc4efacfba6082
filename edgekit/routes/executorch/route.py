"""The ExecuTorch route: PyTorch's own on-device runtime, for Android (and other ARM64) apps.

torch.export, then for INT8 the PT2E flow with ExecuTorch's XNNPACK quantizer (INT8 weights symmetric per channel,
INT8 activations per tensor, calibrated by running the calibration data through the prepared model), then lowering
with the XNNPACK partitioner to a `.pte` program. Which ops XNNPACK took and which stay on ExecuTorch's portable
kernels is reported. Drift is measured with ExecuTorch's Python runtime on the host. The emulator is not offered:
the runtime's Python binding links libtorch, so the guest would need an aarch64 torch beside it.

Per-layer drift cannot come from the runtime: XNNPACK keeps every intermediate tensor inside its delegate. It is
measured on the PT2E model instead (the converted graph with its quantize/dequantize ops, run in PyTorch: the INT8
simulation of the same ranges), and says so. `--fallback auto` removes the quantizer's annotations from the ops
that write and read a sensitive activation, so they run in float (XNNPACK fp32 kernels); the rest stays INT8.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgekit.errors import UnsupportedError, first_line
from edgekit.routes import Route
from edgekit.routes.device import step_name
from edgekit.routes.executorch.runner import quiet_imports
from edgekit.utils.fxgraph import node_op

BUNDLE_NAME = "model.pte"
FOLDED = ("relu", "relu_", "hardtanh", "hardtanh_", "batch_norm", "clamp")  # fused into the op before them
SIMULATED = "executorch: per-layer drift measured on the PT2E INT8 simulation in PyTorch (XNNPACK keeps intermediates"\
            " inside its delegate)"


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

    def qat_quantizer(self, target):
        """The XNNPACK quantizer's QAT configuration with the build's own smallest activation scale (2**-12), and its
        own placement of a clamp after a layer (on the layer's grid)."""
        from edgekit.routes.qat import XNNPACK_EPS, xnnpack_qat

        return xnnpack_qat(eps=XNNPACK_EPS, fused_clamps=False)

    def build(self, plan, export, workdir: Path):
        import torch

        from edgekit.routes.device import DeviceModel, onnx_bindings
        from edgekit.routes.executorch.runner import ExecuTorchRunner

        workdir.mkdir(parents=True, exist_ok=True)
        example = _example(plan)
        names, outputs = [s.name for s in plan.inputs], [o.name for o in export.outputs]
        float_pte, float_notes = lower(plan.model.module, example, workdir / "model.fp32.pte")
        device = DeviceModel(
            path=float_pte, bundle_name=BUNDLE_NAME, float_path=float_pte, runtime=_runtime(False),
            bindings=onnx_bindings(export), open_runner=lambda p: ExecuTorchRunner(p, names, outputs),
            open_float_runner=lambda: ExecuTorchRunner(float_pte, names, outputs), notes=float_notes)
        if plan.target.precision != "int8":
            return device
        graph = torch.export.export(plan.model.module, example).module()
        return self._quantized(plan, device, graph, workdir, frozenset())

    def _quantized(self, plan, float_device, graph, workdir: Path, float_tensors: frozenset[str]):
        """The INT8 program; `float_tensors`: activations (graph node names) whose writers and readers stay float
        (the fallback, which reuses the float program and the exported graph)."""
        import dataclasses

        workdir.mkdir(parents=True, exist_ok=True)
        example, names = _example(plan), [s.name for s in plan.inputs]
        skipped = float_nodes(graph, float_tensors)
        converted = quantize(plan, example, graph, skipped)
        path, notes = lower(converted, example, workdir / BUNDLE_NAME)
        return dataclasses.replace(
            float_device, path=path, runtime=_runtime(True), notes=[*notes, SIMULATED],
            float_modules=tuple(dict.fromkeys(m for m in (_module(n) for n in graph.graph.nodes if n.name in skipped)
                                              if m)),
            per_layer=lambda samples: layer_drift(graph, converted, names, samples),
            layer_links=lambda: fx_links(graph),
            with_float=lambda rows: self._quantized(plan, float_device, graph,
                                                    workdir / f"fallback-{step_name({'float32': rows})}",
                                                    frozenset(r["tensor"] for r in rows)))


def _example(plan) -> tuple:
    import torch

    return tuple(torch.from_numpy(plan.calibration.inputs[s.name][:1].copy()) for s in plan.inputs)


def quantize(plan, example: tuple, graph, skipped: frozenset[str] = frozenset()):
    """PT2E with the XNNPACK quantizer: prepare, run the calibration data through, convert. The `skipped` nodes
    lose their quantization annotations (the XNNPACK quantizer has no per-module "float" setting): they run float."""
    import copy

    import torch

    with quiet_imports():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        try:
            prepared = prepare_pt2e(copy.deepcopy(graph), _skipping(quantizer, skipped) if skipped else quantizer)
        except (KeyError, ValueError, RuntimeError, AssertionError) as exc:
            if not skipped:
                raise
            # a node left float that another node's shared quantization spec points at: this set cannot be built
            raise UnsupportedError(f"the XNNPACK quantizer cannot leave these {len(skipped)} node(s) in float "
                                   f"together: {type(exc).__name__}: {first_line(exc)}",
                                   hint="a fallback step that needs it is recorded and skipped") from None
        inputs = plan.calibration.take(slice(0, plan.options.calibration.max_samples)).inputs
        with torch.no_grad():
            for i in range(len(next(iter(inputs.values())))):
                prepared(*(torch.from_numpy(inputs[s.name][i:i + 1].copy()) for s in plan.inputs))
        return convert_pt2e(prepared)


def _skipping(quantizer, skipped: frozenset[str]):
    """The quantizer, with the annotations of the `skipped` nodes removed after it annotated the graph."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    class Skipping(Quantizer):
        def transform_for_annotation(self, model):
            return quantizer.transform_for_annotation(model)

        def annotate(self, model):
            model = quantizer.annotate(model)
            for node in model.graph.nodes:
                if node.name in skipped:
                    node.meta.pop("quantization_annotation", None)
            return model

        def validate(self, model) -> None:
            quantizer.validate(model)

    return Skipping()


def float_nodes(graph, tensors: frozenset[str]) -> frozenset[str]:
    """The nodes that write each tensor (back through the ops a quantizer fuses into the weighted op before them)
    and the nodes that read it."""
    nodes = {node.name: node for node in graph.graph.nodes}
    found: set[str] = set()
    for name in tensors:
        node = nodes.get(name)
        if node is None:
            continue
        found.update(user.name for user in node.users)
        if node.op == "call_function":
            found.update(writer.name for writer in _writers(node))
    return frozenset(found)


def fx_links(graph) -> list[tuple[str, str]]:
    """(input, output) node-name pairs of the exported graph's ops that read no parameter (pools, views, cats,
    activations): the layers a shared quantization spec may tie (edgekit/measure/groups.py)."""
    return [(arg.name, node.name) for node in graph.graph.nodes if node.op == "call_function"
            and not any(getattr(a, "op", None) == "get_attr" for a in node.all_input_nodes)
            for arg in node.all_input_nodes]


def layer_drift(graph, converted, names: list[str], samples: dict) -> list[dict]:
    """`layers` from the PT2E simulation: every activation quantize_per_tensor of the converted graph, its local
    SQNR (the float activation through its scale) and accumulated SQNR (its dequantized value against float)."""
    from edgekit.measure.drift import sqnr_db
    from edgekit.measure.layers import local_sqnr_db

    quantizers = [n for n in converted.graph.nodes if node_op(n) == "quantize_per_tensor"
                  and getattr(n.args[0], "op", None) == "call_function"]
    watched = {q.args[0].name for q in quantizers}
    dequantized = {next(iter(q.users)).name: q for q in quantizers if len(q.users) == 1}
    floats = _values(graph, names, samples, watched)
    device = _values(converted, names, samples, set(dequantized))
    by_name = {n.name: n for n in graph.graph.nodes}
    rows = []
    for out_name, q in dequantized.items():
        tensor, scale, zero_point = q.args[0].name, float(q.args[1]), int(q.args[2])
        if tensor not in floats or tensor not in by_name:
            continue
        group = _group(by_name[tensor])
        rows.append({"module": group[0] if group else None, "modules": group, "tensor": tensor,
                     "device_tensor": out_name, "op": "quantize_per_tensor", "scale": scale,
                     "zero_point": zero_point, "dtype": "int8",
                     "sqnr_db": round(local_sqnr_db(floats[tensor], scale, zero_point, "int8",
                                                    axis=1 if floats[tensor].ndim > 1 else -1), 3),
                     "accumulated_sqnr_db": round(sqnr_db(floats[tensor], device[out_name]), 3)})
    rows = list({r["tensor"]: r for r in rows}.values())
    return sorted(rows, key=lambda r: (r["sqnr_db"], r["tensor"]))


def _values(module, names: list[str], samples: dict, wanted: set[str]) -> dict:
    """The outputs of the `wanted` nodes over the samples (batch 1, as exported)."""
    import numpy as np
    import torch

    from edgekit.utils.fxgraph import run_nodes

    seen: dict[str, list] = {name: [] for name in wanted}

    def hook(node, out):
        if node.name in seen:
            seen[node.name].append(out.detach().float().numpy().copy())
        return out

    count = len(samples[names[0]])
    run_nodes(module, [tuple(torch.from_numpy(np.ascontiguousarray(samples[n][i:i + 1])) for n in names)
                       for i in range(count)], hook)
    return {name: np.concatenate(values) for name, values in seen.items() if values}


def _writers(node) -> list:
    """The node, then back through the ops a quantizer fuses into the op before them (ReLU, batch norm), the ops
    that feed it: everything that computes this activation on the device."""
    chain = [node]
    while node_op(chain[-1]) in FOLDED and chain[-1].args and getattr(chain[-1].args[0], "op", None) == \
            "call_function":
        chain.append(chain[-1].args[0])
    return chain


def _group(node) -> list[str]:
    """The modules of the ops fused into this activation, first to last."""
    return list(dict.fromkeys(m for m in (_module(n) for n in reversed(_writers(node))) if m))


def _module(node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


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
                      and not str(node.target).startswith("<")  # memory planning's alloc: not an op
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
