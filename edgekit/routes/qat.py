"""The PT2E quantizers whose QAT fake quantization matches a route's INT8 build (`Route.qat_quantizer`).

Every INT8 route here quantizes weights per output channel, symmetric on [-127, 127], and activations per tensor
on 8 bits from the global min/max over its calibration samples: affine on LiteRT (ai-edge-quantizer), ONNX Runtime
(QUInt8, the same grid shifted), OpenVINO and ExecuTorch (XNNPACK); symmetric on TensorRT. The XNNPACK quantizer's
QAT configuration is that (its patterns: convolutions and linear layers with their ReLUs, adds, pools), with its
moving-average activation observers replaced by global min/max ones; TensorRT gets symmetric activations on the
inputs of its matrix ops alone (its explicit Q/DQ), and LiteRT every other op's output on the INT8 grid too."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

AFFINE = "XNNPACKQuantizer QAT: per-channel symmetric INT8 weights, per-tensor affine INT8 activations"
SYMMETRIC = "XNNPACKQuantizer QAT: per-channel symmetric INT8 weights, per-tensor symmetric INT8 activations"


XNNPACK_EPS = 2**-12  # the XNNPACK quantizer's smallest activation scale (ExecuTorch's device has it too)
EXACT_EPS = 1e-12  # the others have none: ai-edge-quantizer's floor is 1e-9 on the range, onnxruntime's is none


def xnnpack_qat(symmetric_activations: bool = False, eps: float = EXACT_EPS, fused_clamps: bool = True
                ) -> tuple[Any, str]:
    """(quantizer, what it simulates) for a whole-model INT8 QAT; `eps`, the smallest activation scale the device's
    quantizer gives (a range under 255 * 2**-12 is rounded on a coarser grid than its own with XNNPACK's). With
    `fused_clamps`, a ReLU6 (any clamp) after a convolution or linear layer rounds once, on its own range, as
    onnxruntime, LiteRT and OpenVINO fuse it (XNNPACK's own build, ExecuTorch's, rounds the layer's output and puts
    the clamp on that grid)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = _device_ranges(get_symmetric_quantization_config(is_per_channel=True, is_qat=True),
                            symmetric_activations, eps)
    quantizer = XNNPACKQuantizer().set_global(config)
    return (_clamps_fused(quantizer) if fused_clamps else quantizer), SYMMETRIC if symmetric_activations else AFFINE


def _rewritten(inner: Any, rewrite: Callable[[Any], None], transform: Callable[[Any], Any] = lambda model: model,
               finish: Callable[[Any], Any] = lambda model: model) -> Any:
    """A PT2E quantizer: `inner`'s graph transform then `transform`, `inner`'s annotations then `rewrite` of them
    (in place), `inner`'s configuration and validation; `after_prepare`, what the fake-quantized graph still needs
    (`inner`'s, then `finish`)."""
    from torchao.quantization.pt2e.quantizer.quantizer import Quantizer

    class Rewritten(Quantizer):
        global_config = getattr(inner, "global_config", None)

        def transform_for_annotation(self, model: Any) -> Any:
            return transform(inner.transform_for_annotation(model))

        def after_prepare(self, model: Any) -> Any:
            return finish(getattr(inner, "after_prepare", lambda graph: graph)(model))

        def annotate(self, model: Any) -> Any:
            inner.annotate(model)
            rewrite(model)
            return model

        def validate(self, model: Any) -> None:
            inner.validate(model)

    return Rewritten()


CLAMPS = ("hardtanh", "hardtanh_", "relu6", "clamp")


def _clamps_fused(xnnpack: Any) -> Any:
    """`xnnpack`, with a clamp that reads a layer's rounded output (on its grid, shared) rounded on its own range
    instead, and the layer's output left unrounded: the device fuses the two into one op with one INT8 output."""
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY, SharedQuantizationSpec

    own = xnnpack.global_config.output_activation

    def fuse(model: Any) -> None:
        for node in model.graph.nodes:
            annotation, source = node.meta.get(Q_ANNOTATION_KEY), node.args[0] if node.args else None
            layer = getattr(source, "meta", {}).get(Q_ANNOTATION_KEY)
            if (node.op == "call_function" and _op(node) in CLAMPS and layer is not None
                    and isinstance(getattr(annotation, "output_qspec", None), SharedQuantizationSpec)
                    and layer.output_qspec is not None and len(source.users) == 1):
                layer.output_qspec = None
                annotation.input_qspec_map = {}
                annotation.output_qspec = own

    return _rewritten(xnnpack, fuse)


def _device_ranges(config: Any, symmetric: bool, eps: float) -> Any:
    """Activations observed as every route's calibration does (the global min/max over the samples, not a moving
    average), symmetric where the route's grid is, with the device's smallest scale."""
    import torch
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import MinMaxObserver, MovingAveragePerChannelMinMaxObserver

    def spec(old: Any) -> Any:
        if old is None:
            return None
        if symmetric:  # [-127, 127], scale amax / 127, as onnxruntime's and TensorRT's symmetric INT8 (not / 127.5)
            old = dataclasses.replace(old, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127)
        return dataclasses.replace(old, observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=MinMaxObserver,
                                                                                          eps=eps))

    # The weights' fused fake quantization (ATen's) takes its scale as max(-min / 128, max / 127) * 255 / 254, up to
    # 0.8 % off every device's amax / 127: each step's weights observed afresh (an average over one observation),
    # the scale computed as the observer's own.
    weight = dataclasses.replace(config.weight, observer_or_fake_quant_ctr=FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver, averaging_constant=1.0, eps=eps))
    return dataclasses.replace(config, input_activation=spec(config.input_activation),
                               output_activation=spec(config.output_activation), weight=weight)


def weighted_inputs_qat() -> tuple[Any, str]:
    """TensorRT's explicit quantization (routes/tensorrt/build.py): a Q/DQ pair on each input of Conv, Gemm and
    MatMul, symmetric; their outputs, adds, activations and pools compute in float. The XNNPACK quantizer's
    annotations of those ops' inputs (a BatchNorm folded into the weights as PT2E QAT folds it), no other."""
    xnnpack, scheme = xnnpack_qat(symmetric_activations=True)
    return _inputs_of_matrix_ops(xnnpack), scheme + INPUTS_ONLY


INPUTS_ONLY = "; only the inputs of convolutions, linear layers and matrix products (TensorRT's Q/DQ), the rest float"
MATRIX_OPS = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "linear", "matmul", "bmm")


def _inputs_of_matrix_ops(xnnpack: Any) -> Any:
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY, QuantizationAnnotation

    activation = xnnpack.global_config.input_activation

    def inputs_only(model: Any) -> None:
        for node in model.graph.nodes:
            annotation = node.meta.pop(Q_ANNOTATION_KEY, None)
            if node.op != "call_function" or _op(node) not in MATRIX_OPS:
                continue
            inputs = dict(getattr(annotation, "input_qspec_map", {}))
            for arg in node.args[:2]:  # a matrix product's two operands; a layer's input (its weight: above)
                if hasattr(arg, "op") and arg not in inputs and not _is_constant(arg):
                    inputs[arg] = activation
            inputs = {arg: spec for arg, spec in inputs.items() if spec is not None}
            node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(inputs, None, _annotated=True)

    return _rewritten(xnnpack, inputs_only)


EVERY = ("; every other op's float output fake-quantized too (ai-edge-quantizer quantizes every tensor), sigmoid "
         "and softmax on TFLite's fixed grid (1/256, zero point -128), tanh on 1/128; a slice, max pool, pad or "
         "reshape on its input's grid")
# outputs whose INT8 grid the TFLite kernels fix (ai-edge-quantizer's materialize_softmax_and_logistic / _tanh)
FIXED_GRID = {"sigmoid": (1.0 / 256, -128), "softmax": (1.0 / 256, -128), "_softmax": (1.0 / 256, -128),
              "tanh": (1.0 / 128, 0)}
FOLDED_NORMS = ("batch_norm", "_native_batch_norm_legit_no_training")
# ops whose output is on its input's grid (TFLite gives them the input's scale): nothing to simulate there
SAME_GRID = ("view", "reshape", "_unsafe_view", "permute", "transpose", "t", "squeeze", "unsqueeze", "flatten",
             "expand", "slice", "select", "clone", "contiguous", "max_pool2d", "max_pool1d", "pad", "constant_pad_nd",
             "alias", "detach", "dropout", "identity", "getitem")  # getitem: a slice of unbind / split / chunk
SLICES = ("getitem", "unbind", "split", "split_with_sizes", "chunk", "slice", "select", "narrow")
# ops the XNNPACK quantizer puts on their input's grid that TFLite requantizes to their own (MEAN: a LayerNorm's
# mean and variance are far smaller than its input, and would round to 0 on the input's grid)
OWN_GRID = ("mean",)
UNROUNDED = "edgekit_unrounded"  # node meta: an op the simulation adds that has no tensor of its own on the device
WEIGHT_MATH = "edgekit_weight_math"  # node meta: weights or a bias computed from parameters (a norm folded in)
# a LayerNorm's variance + eps can round to 0 on its INT8 grid: RSQRT saturates there on the device, and the
# simulation's floor keeps its gradient finite (the rounded output clips it to 0) instead of inf * 0
RSQRT_FLOOR = 1e-20


def every_tensor_qat(converter: str = "onnx2tf") -> tuple[Any, str]:
    """The XNNPACK QAT quantizer, then every float op output it left alone fake-quantized per tensor as well; the
    norms as `converter` lowers them."""
    xnnpack, scheme = xnnpack_qat()
    return _every_output(xnnpack, converter), scheme + EVERY + f"; LayerNorm as {converter} lowers it"


def _every_output(xnnpack: Any, converter: str) -> Any:
    """A PT2E quantizer: `xnnpack`'s annotations (a MEAN on its own grid, not its input's), then the output of every
    float op not yet annotated (except SAME_GRID ops)."""
    import torch
    from torchao.quantization.pt2e.quantizer.quantizer import (
        Q_ANNOTATION_KEY,
        FixedQParamsQuantizationSpec,
        QuantizationAnnotation,
        SharedQuantizationSpec,
    )

    def fixed(scale: float, zero_point: int) -> Any:
        return FixedQParamsQuantizationSpec(torch.int8, scale, zero_point, -128, 127, torch.per_tensor_affine)

    constant, spec = _constant_spec(), xnnpack.global_config.output_activation

    def every_output(model: Any) -> None:
        for node in model.graph.nodes:
            inputs = getattr(node.meta.get(Q_ANNOTATION_KEY), "input_qspec_map", {})
            for arg in [arg for arg in inputs if getattr(arg, "meta", {}).get(UNROUNDED)]:
                del inputs[arg]  # read inside the device's op, not as a tensor of its own
            value = node.meta.get("val")
            name = _op(node)
            shared = getattr(node.meta.get(Q_ANNOTATION_KEY), "output_qspec", None)
            if name in OWN_GRID and isinstance(shared, SharedQuantizationSpec):
                del node.meta[Q_ANNOTATION_KEY]  # XNNPACK's propagation put it on its input's grid
            if node.meta.get(UNROUNDED) and Q_ANNOTATION_KEY not in node.meta:  # a model input it reads: rounded
                read = {arg: spec for arg in node.args if getattr(arg, "op", None) == "placeholder"}
                node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(read, None, _annotated=True)
            if (node.op != "call_function" or Q_ANNOTATION_KEY in node.meta or name in SAME_GRID
                    or node.meta.get(UNROUNDED) or node.meta.get(WEIGHT_MATH)
                    or not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point
                    or (name in FOLDED_NORMS and _after_conv(node))):  # folded into the conv: no tensor of its own
                continue
            grid = fixed(*FIXED_GRID[name]) if name in FIXED_GRID else spec  # the kernel's own grid, if fixed
            constants = {arg: constant for arg in node.args if _is_constant(arg)}  # INT8 in the .tflite too
            node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(constants, grid, _annotated=True)
        _on_their_source_grid(model)

    return _rewritten(xnnpack, every_output, lambda model: tflite_norms(model, converter))



ORT_EXTRA = ("; a BatchNorm no convolution absorbs and a LayerNorm (scale INT8, shift INT32), sigmoid and softmax "
             "(on [0, 1]) rounded too, and a max pool or pad on its input's grid (onnxruntime's QDQ quantizer)")
# ops onnxruntime's QDQ quantizer gives an INT8 output of its own that the XNNPACK patterns leave float
ORT_OWN = ("batch_norm", "_native_batch_norm_legit_no_training", "layer_norm", "native_layer_norm", "softmax",
           "_softmax", "sigmoid")

NORM_SCALE = {"batch_norm": 1, "_native_batch_norm_legit_no_training": 1, "layer_norm": 2, "native_layer_norm": 2}


def onnxruntime_qat() -> tuple[Any, str]:
    """onnxruntime's static QDQ INT8 (routes/onnxruntime/route.py): the XNNPACK patterns, ReLU6 fused, and the
    outputs of ORT_OWN ops rounded as its QDQ quantizer rounds them; a MaxPool's (and a folded Pad's) output shares
    its input's scale there, so the next layer reads it on that grid, not on one of its own."""
    xnnpack, scheme = xnnpack_qat()
    return _onnxruntime_outputs(xnnpack), scheme + ORT_EXTRA


def _onnxruntime_outputs(xnnpack: Any) -> Any:
    import torch
    from torchao.quantization.pt2e.quantizer.quantizer import (
        Q_ANNOTATION_KEY,
        FixedQParamsQuantizationSpec,
        QuantizationAnnotation,
    )

    spec, constant = xnnpack.global_config.output_activation, _constant_spec()
    unit = FixedQParamsQuantizationSpec(torch.int8, 1.0 / 255, -128, -128, 127, torch.per_tensor_affine)

    def own_outputs(model: Any) -> None:
        for node in model.graph.nodes:
            name, value = _op(node), node.meta.get("val")
            if (node.op != "call_function" or name not in ORT_OWN or Q_ANNOTATION_KEY in node.meta
                    or not isinstance(value, torch.Tensor) or (name in FOLDED_NORMS and _after_conv(node))):
                continue
            source = node.args[0]
            rounded = getattr(getattr(source, "meta", {}).get(Q_ANNOTATION_KEY), "output_qspec", None) is not None
            inputs = {} if rounded or not hasattr(source, "op") else {source: spec}
            scale = node.args[NORM_SCALE[name]] if name in NORM_SCALE and len(node.args) > NORM_SCALE[name] else None
            if _is_constant(scale):  # QDQNormalization: the norm's scale INT8 per tensor (its shift: INT32, kept)
                inputs[scale] = constant
            # onnxruntime fixes a softmax's range to [0, 1] (adjust_tensor_ranges)
            grid = unit if name in ("softmax", "_softmax") else spec
            node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(inputs, grid, _annotated=True)
        _on_their_source_grid(model)

    return _rewritten(xnnpack, own_outputs, finish=_norm_shifts_on_int32)


def _norm_shifts_on_int32(model: Any) -> Any:
    """onnxruntime's QDQNormalization stores a norm's shift as INT32 on the scale of its input times its own scale's
    (quantize_bias_static): on a BatchNorm after a ReLU, every zero of a channel lands on one value, and that
    rounding decides on which side of the output grid all of them fall."""
    import torch

    class Int32Shift(torch.nn.Module):
        def __init__(self, reads: Any, scale: Any) -> None:
            super().__init__()
            object.__setattr__(self, "grids", (reads, scale))  # the two fake quantizers, not submodules of this

        def forward(self, shift: Any) -> Any:
            if not int(self.grids[1].fake_quant_enabled[0]):  # ranges observed on the float model, as calibrated
                return shift
            step = self.grids[0].scale.reshape(-1)[0] * self.grids[1].scale.reshape(-1)[0]
            return shift + (torch.round(shift / step) * step - shift).detach()

    for node in list(model.graph.nodes):
        index = NORM_SCALE.get(_op(node)) if node.op == "call_function" else None
        if index is None or len(node.args) <= index + 1:
            continue
        reads, scale, shift = node.args[0], node.args[index], node.args[index + 1]
        if not (getattr(reads, "op", None) == getattr(scale, "op", None) == "call_module"
                and getattr(shift, "op", None) == "get_attr"):
            continue
        target = f"{str(shift.target).replace('.', '_')}_int32"
        model.add_submodule(target, Int32Shift(model.get_submodule(reads.target), model.get_submodule(scale.target)))
        with model.graph.inserting_before(node):
            rounded = model.graph.call_module(target, (shift,))
        node.replace_input_with(shift, rounded)
    model.recompile()
    return model


def _op(node: Any) -> str:
    """A node's op as SAME_GRID / OWN_GRID name them: "mean", "getitem"."""
    name = getattr(getattr(node.target, "_overloadpacket", None), "__name__", None)
    return (name or getattr(node.target, "__name__", str(node.target))).split(".")[-1]


def _on_their_source_grid(model: Any) -> None:
    """An op input reached from a rounded output through SAME_GRID ops or slices (a max pool, a pad, a reshape; the
    query of a fused qkv projection) is read on that output's grid, as TFLite's and onnxruntime's kernels keep it,
    not requantized to its own range."""
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY, SharedQuantizationSpec

    for node in model.graph.nodes:
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        for arg in list(getattr(annotation, "input_qspec_map", {})):
            source = arg
            while getattr(source, "op", None) == "call_function" and _op(source) in SAME_GRID + SLICES:
                source = source.args[0]
            source_annotation = getattr(source, "meta", {}).get(Q_ANNOTATION_KEY)
            if source is not arg and getattr(source_annotation, "output_qspec", None) is not None:
                annotation.input_qspec_map[arg] = SharedQuantizationSpec(source)


def _constant_spec() -> Any:
    """A constant operand of an elementwise op (a norm's scale or shift): per-tensor symmetric INT8."""
    import torch
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantizer.quantizer import QuantizationSpec

    return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_tensor_symmetric,
                            observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=MinMaxObserver, eps=EXACT_EPS))


def _is_constant(arg: Any) -> bool:
    """A parameter or buffer, or a reshape of one."""
    while getattr(arg, "op", None) == "call_function" and "view" in str(arg.target):
        arg = arg.args[0]
    return getattr(arg, "op", None) == "get_attr"


def tflite_norms(model: Any, converter: str = "onnx2tf") -> Any:
    """LiteRT lowers a LayerNorm, and a BatchNorm no convolution absorbs, into elementwise ops with an INT8 output
    each, and an attention into the query and key each scaled by the root of its scale, BATCH_MATMUL, SOFTMAX (on
    its fixed 1/256 grid) and BATCH_MATMUL: the graph gets the same ops, so the simulation rounds where the device
    does. A LayerNorm as `converter` lowers it (read from the shipped DeiT files; `_layer_norm`); a BatchNorm as SUB,
    MUL, MUL, ADD. Same function, same parameter names."""
    import torch

    aten = torch.ops.aten
    graph = model.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == aten.layer_norm.default:
            with graph.inserting_before(node):
                out = _layer_norm(_Ops(model, graph, node.meta.get("nn_module_stack")), node, converter)
            node.replace_all_uses_with(out)
            graph.erase_node(node)
        elif node.target == aten.batch_norm.default and not _after_conv(node):
            x, weight, bias, mean, var = node.args[:5]
            eps = node.args[7] if len(node.args) > 7 else 1e-5
            with graph.inserting_before(node):
                new = _Ops(model, graph, node.meta.get("nn_module_stack"))
                inverse = new(aten.rsqrt.default, new(aten.add.Tensor, _channels(new, var, x), eps))
                scaled = new(aten.mul.Tensor, new(aten.sub.Tensor, x, _channels(new, mean, x)), inverse)
                out = _affine(new, scaled, _channels(new, weight, x), _channels(new, bias, x))
            node.replace_all_uses_with(out)
            graph.erase_node(node)
        elif node.target == aten.scaled_dot_product_attention.default and _plain_attention(node):
            query, key, value = node.args[:3]
            root = (node.kwargs.get("scale") or query.meta["val"].shape[-1] ** -0.5) ** 0.5
            with graph.inserting_before(node):
                new = _Ops(model, graph, node.meta.get("nn_module_stack"))
                scores = new(aten.matmul.default, new(aten.mul.Tensor, query, root),
                             new(aten.transpose.int, new(aten.mul.Tensor, key, root), -2, -1))
                out = new(aten.matmul.default, new(aten._softmax.default, scores, -1, False), value)
            node.replace_all_uses_with(out)
            graph.erase_node(node)
    graph.eliminate_dead_code()
    model.recompile()
    return model


def _layer_norm(new: Any, node: Any, converter: str) -> Any:
    """A LayerNorm's ops on the device. Both converters: MEAN, SQUARED_DIFFERENCE (the difference inside the op, not
    rounded), MEAN, ADD eps, RSQRT. onnx2tf then computes Keras's form: m = RSQRT * scale, x * m + (shift - mean *
    m). litert-torch: x * RSQRT + (0 - mean * RSQRT), and the scale and shift folded into the weights and bias of a
    linear layer that alone reads the norm (TFLite's fusion of a constant MUL and ADD into the following
    FULLY_CONNECTED: the weights rounded per channel as W * scale), else MUL scale, ADD shift."""
    import torch

    aten = torch.ops.aten
    x, shape, weight, bias = node.args[:4]
    eps = node.args[4] if len(node.args) > 4 else 1e-5
    dims = list(range(-len(shape), 0))
    mean = new(aten.mean.dim, x, dims, True)
    difference = new(aten.sub.Tensor, x, mean)
    difference.meta[UNROUNDED] = True
    variance = new(aten.mean.dim, new(aten.mul.Tensor, difference, difference), dims, True)
    floored = new(aten.clamp_min.default, new(aten.add.Tensor, variance, eps), RSQRT_FLOOR)
    floored.meta[UNROUNDED] = True
    inverse = new(aten.rsqrt.default, floored)
    if converter != "litert-torch":
        m = inverse if weight is None else new(aten.mul.Tensor, inverse, weight)
        product = new(aten.mul.Tensor, mean, m)
        shift = new(aten.neg.default, product) if bias is None else new(aten.sub.Tensor, bias, product)
        return new(aten.add.Tensor, new(aten.mul.Tensor, x, m), shift)
    out = new(aten.add.Tensor, new(aten.mul.Tensor, x, inverse),
              new(aten.neg.default, new(aten.mul.Tensor, inverse, mean)))
    users = list(node.users)
    if len(users) == 1 and users[0].target == aten.linear.default and users[0].args[0] is node:
        _folded_into(new, users[0], weight, bias)
        return out
    return _affine(new, out, weight, bias)


def _folded_into(new: Any, linear: Any, scale: Any, shift: Any) -> None:
    """`linear` computes with W * scale and b + W @ shift in place of its weights and bias (what TFLite's converter
    gives it), from the same parameters: they train as before, and the weights are rounded where the device's are."""
    import torch

    aten = torch.ops.aten
    weight, bias = linear.args[1], linear.args[2] if len(linear.args) > 2 else None
    made = []
    with new.graph.inserting_before(linear):  # the linear's own parameters may be read only there
        folded_weight = weight if scale is None else new(aten.mul.Tensor, weight, scale)
        folded_bias = bias
        if shift is not None:
            made.append(new(aten.matmul.default, weight, shift))
            folded_bias = made[-1] if bias is None else new(aten.add.Tensor, bias, made[-1])
    for value in [*made, folded_weight, folded_bias]:
        if value is not None and value not in (weight, bias):
            value.meta[WEIGHT_MATH] = True
    linear.args = (linear.args[0], folded_weight, folded_bias, *linear.args[3:])


def _plain_attention(node: Any) -> bool:
    """An attention without mask, dropout or causal flag: the one LiteRT lowers as MUL, MUL, BATCH_MATMUL, SOFTMAX,
    BATCH_MATMUL."""
    extra = list(node.args[3:]) + [node.kwargs.get(k) for k in ("attn_mask", "dropout_p", "is_causal", "enable_gqa")]
    return not any(extra)


def _after_conv(node: Any) -> bool:
    source = node.args[0]
    return getattr(source, "op", None) == "call_function" and "conv" in str(source.target)


def _channels(new: Any, value: Any, x: Any) -> Any:
    """A per-channel vector shaped to broadcast over NC... (channels on axis 1)."""
    import torch

    if value is None:
        return None
    rank = len(x.meta["val"].shape)
    return new(torch.ops.aten.view.default, value, [-1] + [1] * (rank - 2))


def _affine(new: Any, x: Any, weight: Any, bias: Any) -> Any:
    import torch

    aten = torch.ops.aten
    out = x if weight is None else new(aten.mul.Tensor, x, weight)
    return out if bias is None else new(aten.add.Tensor, out, bias)


class _Ops:
    """Makes call_function nodes with their FakeTensor `val` (what the annotators read), from the args' own, in the
    replaced node's module."""

    def __init__(self, model: Any, graph: Any, stack: dict | None = None) -> None:
        self.model, self.graph, self.stack = model, graph, stack  # the module the replaced node belonged to

    def __call__(self, op: Any, *args: Any) -> Any:
        node = self.graph.call_function(op, args)
        if self.stack is not None:
            node.meta["nn_module_stack"] = self.stack
        values = [self._val(a) for a in args]
        mode = next(v.fake_mode for v in values if hasattr(v, "fake_mode"))
        with mode:
            node.meta["val"] = op(*[mode.from_tensor(v) if _real(v) else v for v in values])
        return node

    def _val(self, arg: Any) -> Any:
        if not hasattr(arg, "op"):
            return arg
        if "val" in arg.meta:
            return arg.meta["val"]
        if arg.op == "get_attr":
            owner = self.model
            for part in arg.target.split("."):
                owner = getattr(owner, part)
            return owner.detach()
        raise ValueError(f"no value for {arg}")


def _real(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and not hasattr(value, "fake_mode")


def keeping_out(quantizer: Any, modules: frozenset[str]) -> Any:
    """`quantizer` with the ops of `modules` (and their submodules) left unquantized: no fake quantization on their
    outputs, their weights or the values they read, nor where another op reads their outputs, and a convolution or
    linear layer that computes or reads them in float (weights too), as the routes' builds leave them; the layers
    the ladder keeps out of INT8 stay out of the simulation."""
    return _unannotated(quantizer, modules) if modules else quantizer


def _weighted(node: Any) -> bool:
    return node.op == "call_function" and any(k in str(node.target) for k in ("conv", "linear"))


def _shares(spec: Any, kept: set) -> bool:
    """A SharedQuantizationSpec tied to a kept node, or to an edge from or to one."""
    edge = getattr(spec, "edge_or_node", None)
    return edge is not None and bool(set(edge if isinstance(edge, tuple) else (edge,)) & kept)


def _unannotated(inner: Any, modules: frozenset[str]) -> Any:
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    def inside(node: Any) -> bool:
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        return any(path == m or path.startswith(m + ".") for m in modules)

    def keep_out(model: Any) -> None:
        kept = {node for node in model.graph.nodes if node.op == "call_function" and inside(node)}
        # the op a kept activation is fused into (a conv or linear before its ReLU / BatchNorm) computes it
        kept |= {arg for node in kept for arg in node.all_input_nodes if _weighted(arg)}
        # and the weighted ops that read a kept value compute in float too (their weights unquantized)
        kept |= {user for node in kept for user in node.users if _weighted(user)}
        for node in model.graph.nodes:
            annotation = node.meta.get(Q_ANNOTATION_KEY)
            if annotation is None:
                continue
            if node in kept:
                del node.meta[Q_ANNOTATION_KEY]
                continue
            annotation.input_qspec_map = {arg: spec for arg, spec in annotation.input_qspec_map.items()
                                          if arg not in kept and not _shares(spec, kept)}
            if _shares(annotation.output_qspec, kept):  # on the grid of a value left in float: float too
                annotation.output_qspec = None

    return _rewritten(inner, keep_out)
