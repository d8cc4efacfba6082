"""Empirical bias correction of an INT8 TFLite model (Nagel et al. 2019, "Data-Free Quantization", section 4.2,
in its empirical form): quantization moves the mean of a layer's output, and the move repeats at every pixel.

Rounding a constant (an image's flat background, a channel that is almost always the same) to the INT8 grid gives
the same error at every position, so it does not average out: it adds up layer after layer. Each weighted op
(CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) of the device model with an INT32 bias gets, in graph order, the
mean difference between its output and the float32 model's on the calibration samples subtracted from that bias
(per output channel, in the bias's own scale). The op's weights, scales and every other tensor stay as the
quantizer wrote them; ops in INT16 or float are left alone.

Linear in the graph: ops are corrected level by level (an op's level: the most weighted ops on a path from the
inputs to it), all ops of a level from one interpreter run, after the levels before them were
corrected, so each corrects only what is left. The ops that share one weight tensor (a recurrent layer unrolled
over its time steps: 481 FULLY_CONNECTED ops of a 3-layer LSTM over 160 frames read 7 weight tensors) are one
layer: one shift, the mean over all its steps, measured at its first level. So an unrolled LSTM takes a handful of
runs, not one per op. The biases are patched in the serialized file's bytes, so nothing is repacked per level. At
most MAX_LEVELS levels are corrected (a bound in work, not in seconds, so a build gives the same file on every
machine); the block's `stopped` says when a deeper model was cut there, and `seconds` what it took.

A fused ReLU/ReLU6 passes a bias shift only where the layer is active: the mean is taken there. Under
`--equalize auto` the corrected model is kept only when its output SQNR against the float32 model, on the same
samples, is higher; `on` keeps it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.measure.drift import sqnr_db
from edgekit.runners.binding import Binding

SAMPLES = 32
MAX_LEVELS = 64  # levels corrected at most (one interpreter run each); deeper ones are left as quantized, and said
_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_ACTIVE = {0: (-np.inf, np.inf), 1: (0.0, np.inf), 2: (-1.0, 1.0), 3: (0.0, 6.0)}  # NONE, RELU, RELU_N1_TO_1, RELU6
MAX_BYTES = 2**31 - 2**27  # a flatbuffer over 2 GB needs external buffers: left as written


@dataclass(frozen=True)
class Corrected:
    path: Path
    block: dict | None  # report.json quantization.bias_correction (None: nothing to correct)


@dataclass(frozen=True)
class _Op:
    output: str  # the op's output tensor name (the same in the float32 model)
    tensor: int  # the bias tensor's index in the main subgraph
    buffer: int  # the bias's buffer index
    weights: int  # the weight's buffer index: ops that share it are one layer (a recurrent layer's time steps)
    level: int  # the most weighted ops on a path from the inputs to this one, itself included
    scales: np.ndarray  # the bias's per-channel scales (input scale x weight scale)
    active: tuple[float, float]  # where the fused activation passes a shift through


def correct_biases(device_path: Path, device_in: list[Binding], float_path: Path, float_in: list[Binding],
                   samples: dict[str, np.ndarray], mode: str, out: Path) -> Corrected:
    """`device_path` with corrected biases written to `out` (mode on, or auto when it measures better)."""
    start = time.perf_counter()
    content = device_path.read_bytes()
    if mode == "off" or len(content) > MAX_BYTES:
        return Corrected(device_path, None)
    model = _unpack(content)
    float_content = float_path.read_bytes()
    outputs = _paired_outputs(model, _unpack(float_content))
    dequantized = _dequantized(model)
    weighted = _weighted_ops(model)
    if _unshare(model, weighted):  # one bias buffer per bias tensor, so each can be patched alone
        content, weighted = _pack(model), _weighted_ops(model)  # the copies' buffer indices
    # an op's float counterpart: the same tensor name, or for a last op, the float output its DEQUANTIZE pairs with
    ops = [(op, op.output if op.output not in dequantized else outputs.get(dequantized[op.output], op.output))
           for op in weighted]
    floats = _values(float_content, float_in, samples, [*(name for _, name in ops), *outputs.values()])
    ops = [(op, name) for op, name in ops if name in floats]
    if not ops or not outputs:  # nothing to correct, or nothing to judge it by
        return Corrected(device_path, None)
    before = _output_sqnr(content, device_in, samples, floats, outputs)
    if not np.isfinite(before):  # no output could be compared: nothing to judge a correction by
        return Corrected(device_path, None)
    patched = bytearray(content)  # the biases are patched in the file's bytes: no repacking per level
    biases = _bias_views(patched, {op.buffer for op, _ in ops})
    corrected, rounds = [], _rounds(ops)
    stopped = None if len(rounds) <= MAX_LEVELS else f"corrected the first {MAX_LEVELS} of {len(rounds)} levels"
    for batch in rounds[:MAX_LEVELS]:
        got = _values(bytes(patched), device_in, samples, [op.output for layer in batch for op, _ in layer])
        for layer in batch:
            corrected += _correct_layer(layer, got, floats, biases)
    content = bytes(patched)
    after = _output_sqnr(content, device_in, samples, floats, outputs)
    applied = bool(corrected) and (mode == "on" or after > before)
    block = {"mode": mode, "applied": applied, "layers": corrected, "samples": len(next(iter(samples.values()))),
             "sqnr_db": {"before": round(before, 3), "after": round(after, 3)},
             "seconds": round(time.perf_counter() - start, 2), "levels": len(rounds), "stopped": stopped}
    if not applied:
        return Corrected(device_path, block)
    out.write_bytes(content)
    return Corrected(out, block)


def _rounds(ops: list[tuple[_Op, str]]) -> list[list[list[tuple[_Op, str]]]]:
    """The ops as levels of layers: a layer is the ops sharing a weight tensor, placed at its first op's level."""
    layers: dict[int, list[tuple[_Op, str]]] = {}
    for op, reference in ops:
        layers.setdefault(op.weights, []).append((op, reference))
    levels: dict[int, list[list[tuple[_Op, str]]]] = {}
    for layer in layers.values():
        levels.setdefault(min(op.level for op, _ in layer), []).append(layer)
    return [levels[level] for level in sorted(levels)]


def _correct_layer(layer: list[tuple[_Op, str]], got: dict[str, np.ndarray], floats: dict,
                   biases: dict[int, np.ndarray]) -> list[str]:
    """One shift per output channel for the layer (the mean error over all its ops' outputs, where the fused
    activation passes it), subtracted from each op's bias (`biases`: writable views by buffer) in that op's own
    scale. Returns the ops corrected."""
    pairs = [(op, got[op.output], floats[ref]) for op, ref in layer
             if op.output in got and got[op.output].shape == floats[ref].shape]
    if not pairs:
        return []
    sums = [_error_sums(device, reference, op.active) for op, device, reference in pairs]
    shift = sum(s for s, _ in sums) / np.maximum(sum(c for _, c in sums), 1)
    done: set[int] = set()
    for op, _, _ in pairs:
        if op.buffer in done:  # one bias tensor read by several ops: shifted once
            continue
        done.add(op.buffer)
        bias = biases[op.buffer].astype(np.int64)
        biases[op.buffer][:] = np.clip(bias - np.round(shift / op.scales).astype(np.int64), -2**31, 2**31 - 1)
    return [op.output for op, _, _ in pairs]


def _unshare(model, ops: list[_Op]) -> bool:
    """Each bias tensor of `ops` gets a buffer of its own where others share it (a converter stores equal constants
    once); True when any was copied."""
    import copy

    tensors = [t for graph in model.subgraphs for t in graph.tensors]
    users: dict[int, int] = {}
    for tensor in tensors:
        users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    copied = False
    for index in dict.fromkeys(op.tensor for op in ops):
        tensor = model.subgraphs[0].tensors[index]
        if users[tensor.buffer] > 1:
            users[tensor.buffer] -= 1
            model.buffers.append(copy.deepcopy(model.buffers[tensor.buffer]))
            tensor.buffer = len(model.buffers) - 1
            copied = True
    return copied


def _bias_views(content: bytearray, buffers: set[int]) -> dict[int, np.ndarray]:
    """Writable int32 views of these buffers' data inside the serialized model (patching them patches the file)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    views = {}
    for index in buffers:
        buffer = model.Buffers(index)
        if buffer.Offset() > 1:  # data kept after the flatbuffer (a converter's large-model layout)
            views[index] = np.frombuffer(content, np.uint8, buffer.Size(), buffer.Offset()).view(np.int32)
        else:
            views[index] = buffer.DataAsNumpy().view(np.int32)
    return views


def _unpack(content: bytes):
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(content, 0)
    for buffer in model.buffers or []:  # data kept after the flatbuffer: bring it in, offsets change on repacking
        if getattr(buffer, "offset", 0) > 1:
            buffer.data = np.frombuffer(content[buffer.offset:buffer.offset + buffer.size], np.uint8)
            buffer.offset, buffer.size = 0, 0
    return model


def _pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _weighted_ops(model) -> list[_Op]:
    """The weighted ops of the main subgraph with an INT32 bias, in execution order."""
    from ai_edge_litert import schema_py_generated as schema

    names = {getattr(schema.BuiltinOperator, name): name for name in _WEIGHTED}
    graph, found, depth = model.subgraphs[0], [], {}
    for op in graph.operators:  # in execution order
        code = model.operatorCodes[op.opcodeIndex]
        kind = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        inputs = list(op.inputs)
        level = max((depth.get(i, 0) for i in inputs if i >= 0), default=0) + (kind is not None)
        depth.update((i, level) for i in op.outputs)
        if kind is None or len(inputs) < 3 or inputs[2] < 0:
            continue
        bias = graph.tensors[inputs[2]]
        activation = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        data = model.buffers[bias.buffer].data
        if bias.type != schema.TensorType.INT32 or activation not in _ACTIVE or data is None or not len(data):
            continue
        scales = np.asarray(bias.quantization.scale if bias.quantization else [], np.float64)
        if not scales.size or not np.all(scales > 0):
            continue
        found.append(_Op(graph.tensors[op.outputs[0]].name.decode(), inputs[2], bias.buffer,
                         graph.tensors[inputs[1]].buffer, level, scales, _ACTIVE[activation]))
    return found


def _outputs(model) -> list[str]:
    graph = model.subgraphs[0]
    return [graph.tensors[i].name.decode() for i in graph.outputs]


def _dequantized(model) -> dict[str, str]:
    """Tensor -> the output of the DEQUANTIZE op that reads it (a quantizer's float output)."""
    from ai_edge_litert import schema_py_generated as schema

    graph, found = model.subgraphs[0], {}
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE:
            found[graph.tensors[op.inputs[0]].name.decode()] = graph.tensors[op.outputs[0]].name.decode()
    return found


def _paired_outputs(device, floats) -> dict[str, str]:
    """Device output tensor -> float32 output tensor: by name (a quantizer's `_dequant` suffix aside), else by
    position when both have as many outputs; {} when they cannot be paired."""
    ours, theirs = _outputs(device), _outputs(floats)
    by_name = {name: name.removesuffix("_dequant") for name in ours if name.removesuffix("_dequant") in theirs}
    if len(by_name) == len(ours):
        return by_name
    return dict(zip(ours, theirs)) if len(ours) == len(theirs) else {}


def _values(content: bytes, bindings: list[Binding], samples: dict[str, np.ndarray],
            names: list[str]) -> dict[str, np.ndarray]:
    """The named tensors of a TFLite model (dequantized), over the samples; names it lacks are left out."""
    from edgekit.routes.litert.layers import keeping_interpreter, tensor_values

    interpreter = keeping_interpreter(content)
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    wanted = [name for name in dict.fromkeys(names) if name in index]
    values = tensor_values(interpreter, bindings, samples, [index[name] for name in wanted])
    return {name: values[index[name]] for name in wanted}


def _error_sums(got: np.ndarray, want: np.ndarray, active: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel (the last axis), the sum of device minus float where the activation passes a shift, and
    how many values that is."""
    channels = got.shape[-1]
    error, reference = (got - want).reshape(-1, channels), want.reshape(-1, channels)
    low, high = active
    inside = (reference > low) & (reference < high)
    return (error * inside).sum(0), inside.sum(0)


def _output_sqnr(content: bytes, bindings: list[Binding], samples: dict[str, np.ndarray], floats: dict,
                 outputs: dict[str, str]) -> float:
    """The worst output SQNR of the device model against the float32 model (outputs paired by _paired_outputs)."""
    got = _values(content, bindings, samples, list(outputs))
    values = [sqnr_db(floats[theirs], got[ours]) for ours, theirs in outputs.items()
              if got[ours].shape == floats[theirs].shape]
    return min(values) if values else float("-inf")
