"""Cross-layer equalization before quantization (Nagel et al. 2019, "Data-Free Quantization", section 4.1).

Two weighted layers in a row, with only per-channel positive-homogeneous ops between them (batch norm, ReLU,
leaky ReLU, max/avg pooling, dropout), compute the same function when output channel c of the first is divided by
s_c and input channel c of the second multiplied by it. Choosing s_c = sqrt(r1_c / r2_c) (r: the channel's
largest absolute weight) gives both layers the same per-channel range, so one per-tensor INT8 scale for the
activation between them and per-channel weight scales lose less. The scaling is applied to the PyTorch model's
parameters (on a copy), before export, so every route quantizes the equalized model.

`auto` keeps the equalized weights only when they measure better: the model's output SQNR with the weights of the
equalized layers and the activations between them in simulated INT8 (per-channel symmetric weights, per-tensor
asymmetric activations, min/max ranges on the calibration samples), before against after.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import numpy as np

from edgekit.inputs.model import LoadedModel
from edgekit.transform.equalize.common import (
    MEASURE_SAMPLES,
    Equalized,
    Pair,
    fake_quant_weight,
    not_applied,
    scale_pairs,
)
from edgekit.utils.fxgraph import node_op, run_nodes

_WEIGHTED = ("conv1d", "conv2d", "conv3d", "linear")
_THROUGH = ("relu", "relu_", "leaky_relu", "leaky_relu_", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d",
            "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "dropout", "clone",
            "contiguous")


def equalize(model: LoadedModel, mode: str, inputs: dict[str, np.ndarray], names: list[str]) -> Equalized:
    """Equalize `model` (mode on), or measure and keep the better of the two (auto)."""
    import torch

    program = _program(model, inputs, names)
    pairs = find_pairs(program)
    if not pairs:
        # asked for (on), the user hears why nothing changed; auto stays quiet (report.json says it all)
        return Equalized(_keeping(model, program), not_applied(mode),
                         "equalize on: no pair of consecutive weighted layers to equalize" if mode == "on" else None)
    params = {k: v.detach().clone() for k, v in program.state_dict.items() if isinstance(v, torch.Tensor)}
    scaled, totals = scale_pairs(params, pairs)
    samples = [tuple(torch.from_numpy(np.ascontiguousarray(inputs[n][i:i + 1])) for n in names)
               for i in range(min(MEASURE_SAMPLES, len(inputs[names[0]])))]
    clean, channel_ranges = _interpret(program.module(), samples, {p.activation: p.axis for p in pairs}, {})
    ranges_before = {name: (float(low.min()), float(high.max())) for name, (low, high) in channel_ranges.items()}
    ranges_after = {name: (float((low / totals[name]).min()), float((high / totals[name]).max()))
                    for name, (low, high) in channel_ranges.items()}  # the activations divided by s_c, exactly
    before, after = (_simulated_sqnr(program, values, pairs, samples, ranges, clean)
                     for values, ranges in ((params, ranges_before), (scaled, ranges_after)))
    applied = bool(mode == "on" or after > before)
    listed = [{"first": p.first, "second": p.second, "norm": p.norm} for p in pairs]
    block = {"mode": mode, "applied": applied, "pairs": listed,
             "sqnr_db": {"before": round(float(before), 2), "after": round(float(after), 2)}}
    names_text = ", ".join(f"{p.first} -> {p.second}" for p in pairs)
    verb = "equalized" if applied else "left as they were (equalizing measured worse)"
    note = (f"equalize {mode}: {len(pairs)} layer pair(s) {verb} ({names_text}); simulated INT8 SQNR of those "
            f"layers {before:.1f} dB -> {after:.1f} dB")
    if not applied:
        return Equalized(_keeping(model, program), block, note)
    return Equalized(_with_parameters(model, program, scaled, pairs), block, note)


def _keeping(model: LoadedModel, program: Any) -> LoadedModel:
    """A module keeps the program exported here, so the ONNX export does not trace the model again."""
    return dataclasses.replace(model, program=program) if model.kind == "module" else model


def find_pairs(program: Any) -> list[Pair]:
    """Consecutive weighted layers of an ExportedProgram whose in-between tensor feeds nothing else."""
    to_param = dict(program.graph_signature.inputs_to_parameters)
    pairs = []
    for node in program.graph.nodes:
        first = _weighted(node, to_param)
        if first is None:
            continue
        pair = _follow(node, first, to_param)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _weighted(node: Any, to_param: dict[str, str]) -> str | None:
    """The module path of a conv/linear node whose weight is a parameter, else None."""
    if node.op != "call_function" or node_op(node) not in _WEIGHTED or len(node.args) < 2:
        return None
    weight = node.args[1]
    fqn = to_param.get(getattr(weight, "name", None))
    return fqn.rsplit(".", 1)[0] if fqn and fqn.endswith(".weight") else None


def _follow(node: Any, first: str, to_param: dict[str, str]) -> Pair | None:
    norm = None
    current = node
    while len(current.users) == 1:
        user = next(iter(current.users))
        op = node_op(user)
        if op == "batch_norm" and current is node and (found := _norm_params(user, to_param)):
            norm = found
        elif op in _THROUGH and user.args[0] is current:
            pass
        elif op in _WEIGHTED and user.args[0] is current and (_groups(user) == 1 or _depthwise(user)):
            second = _weighted(user, to_param)
            axis = -1 if node_op(node) == "linear" else 1
            return (Pair(first, second, norm, current.name, axis, _groups(user) > 1)
                    if second and second != first else None)
        else:
            return None
        current = user
    return None


def _norm_params(node: Any, to_param: dict[str, str]) -> str | None:
    weight, bias = (to_param.get(getattr(a, "name", None)) for a in node.args[1:3])
    if not (weight and bias) or weight.rsplit(".", 1)[0] != bias.rsplit(".", 1)[0]:
        return None
    return weight.rsplit(".", 1)[0]


def _depthwise(node: Any) -> bool:
    """A conv with one input channel per group and as many groups as output channels (MobileNet's 3x3)."""
    weight = node.args[1].meta.get("val") if len(node.args) > 1 and hasattr(node.args[1], "meta") else None
    return weight is not None and weight.dim() > 2 and int(weight.shape[1]) == 1 and \
        _groups(node) == int(weight.shape[0])


def _groups(node: Any) -> int:
    if node_op(node) == "linear":
        return 1
    return int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))


def _program(model: LoadedModel, inputs: dict[str, np.ndarray], names: list[str]) -> Any:
    import torch

    if model.kind == "exported_program":
        return model.program
    args = tuple(torch.from_numpy(np.ascontiguousarray(inputs[n][:1])) for n in names)
    if model.kind == "torchscript":
        from edgekit.transform.compress.lift import exported_program

        return exported_program(model, args)
    with torch.no_grad():
        return torch.export.export(model.module.eval(), args)


def _changed(pairs: list[Pair]) -> list[str]:
    """The parameters equalization rewrites: the first layer's (or its batch norm's) weight and bias, the second
    layer's weight."""
    return sorted({f"{p.norm or p.first}.{n}" for p in pairs for n in ("weight", "bias")} |
                  {f"{p.second}.weight" for p in pairs})


def _with_parameters(model: LoadedModel, program: Any, values: dict[str, Any], pairs: list[Pair]) -> LoadedModel:
    """A copy of the model with the equalized parameters (the user's model is never touched); a TorchScript model
    goes on as its exported program."""
    changed = _changed(pairs)
    if model.kind in ("exported_program", "torchscript"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation, raised by deepcopy
            program = copy.deepcopy(program)
        for key in changed:
            if key in program.state_dict:
                program.state_dict[key] = _like(program.state_dict[key], values[key])
        return dataclasses.replace(model, kind="exported_program", program=program, module=program.module())
    module = copy.deepcopy(model.module)
    for key in changed:
        _assign(module, key, values[key])
    return dataclasses.replace(model, module=module, program=None)


def _assign(module: Any, key: str, value: Any) -> None:
    """Replace parameter or buffer `key` of `module` by a new tensor (the old one is left as it was)."""
    owner_name, _, leaf = key.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = _like(owner._parameters[leaf], value)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value.detach().clone()


def _like(old: Any, value: Any) -> Any:
    import torch

    if isinstance(old, torch.nn.Parameter):
        return torch.nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad)
    return value.detach().clone()


def _simulated_sqnr(program: Any, values: dict[str, Any], pairs: list[Pair], samples: list[tuple],
                    ranges: dict[str, tuple[float, float]], clean: list[Any]) -> float:
    """Output SQNR (dB) against `clean` of the program with `values`, the pairs' weights and the activations
    between them (over `ranges`) in INT8."""
    import torch

    graph_module = program.module()  # its tensors are the program's own: replaced, never written into
    weights = {f"{p.first}.weight" for p in pairs} | {f"{p.second}.weight" for p in pairs}
    with torch.no_grad():
        for key in sorted(weights | set(_changed(pairs))):  # the rest is the program's own, unchanged
            if key in values:
                _assign(graph_module, key, fake_quant_weight(values[key]) if key in weights else values[key])
        quantized, _ = _interpret(graph_module, samples, {}, ranges)
    signal = sum(float((c ** 2).sum()) for c in clean)
    noise = sum(float(((c - q) ** 2).sum()) for c, q in zip(clean, quantized))
    return float(10 * np.log10(max(signal, 1e-30) / max(noise, 1e-30)))


def _flat(result: Any) -> Any:
    import torch

    if isinstance(result, torch.Tensor):
        return result.detach().float().reshape(-1)
    items = result.values() if isinstance(result, dict) else result
    return torch.cat([_flat(item) for item in items])


def _fake_quant_activation(value: Any, low: float, high: float) -> Any:
    """Per-tensor asymmetric 8-bit over [min(low, 0), max(high, 0)]."""
    low, high = min(low, 0.0), max(high, 0.0)
    step = max(high - low, 1e-12) / 255
    zero = round(-low / step)
    return ((value / step).round() + zero).clamp(0, 255).sub(zero) * step


def _interpret(module: Any, samples: list[tuple], record: dict[str, int],
               ranges: dict[str, tuple[float, float]]) -> tuple[list[Any], dict[str, tuple[Any, Any]]]:
    """Run every sample through the graph: its flattened outputs, the per-channel min/max of the `record` nodes'
    outputs ({node: channel axis}), and the outputs of the `ranges` nodes fake-quantized to 8 bits over their
    range."""
    import torch

    seen: dict[str, tuple[Any, Any]] = {}

    def hook(node, out):
        if node.name in record:
            channels = out.movedim(record[node.name], 0).reshape(out.shape[record[node.name]], -1)
            low, high = channels.amin(1), channels.amax(1)
            old = seen.get(node.name, (low, high))
            seen[node.name] = (torch.minimum(old[0], low), torch.maximum(old[1], high))
        return _fake_quant_activation(out, *ranges[node.name]) if node.name in ranges else out

    return [_flat(result) for result in run_nodes(module, samples, hook)], seen
