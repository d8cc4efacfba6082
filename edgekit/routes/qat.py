"""The PT2E quantizers whose QAT fake quantization matches a route's INT8 build (`Route.qat_quantizer`).

Every INT8 route here quantizes weights per output channel, symmetric on [-127, 127], and activations per tensor
on 8 bits from the global min/max over its calibration samples: affine on LiteRT (ai-edge-quantizer), ONNX Runtime
(QUInt8, the same grid shifted), OpenVINO and ExecuTorch (XNNPACK); symmetric on TensorRT. The XNNPACK quantizer's
QAT configuration is that (its patterns: convolutions and linear layers with their ReLUs, adds, pools), with its
moving-average activation observers replaced by global min/max ones; TensorRT gets symmetric activations, and LiteRT
every other op's output on the INT8 grid too."""

from __future__ import annotations

import dataclasses
from typing import Any

AFFINE = "XNNPACKQuantizer QAT: per-channel symmetric INT8 weights, per-tensor affine INT8 activations"
SYMMETRIC = "XNNPACKQuantizer QAT: per-channel symmetric INT8 weights, per-tensor symmetric INT8 activations"


def xnnpack_qat(symmetric_activations: bool = False) -> tuple[Any, str]:
    """(quantizer, what it simulates) for a whole-model INT8 QAT."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = _device_ranges(get_symmetric_quantization_config(is_per_channel=True, is_qat=True),
                            symmetric_activations)
    return XNNPACKQuantizer().set_global(config), SYMMETRIC if symmetric_activations else AFFINE


def _device_ranges(config: Any, symmetric: bool) -> Any:
    """Activations observed as every route's calibration does (the global min/max over the samples, not a moving
    average), symmetric where the route's grid is."""
    import torch
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import MinMaxObserver

    def spec(old: Any) -> Any:
        if old is None:
            return None
        return dataclasses.replace(old, qscheme=torch.per_tensor_symmetric if symmetric else old.qscheme,
                                   observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=MinMaxObserver,
                                                                                     eps=2**-12))

    return dataclasses.replace(config, input_activation=spec(config.input_activation),
                               output_activation=spec(config.output_activation))


EVERY = ("; every other op's float output fake-quantized too (ai-edge-quantizer quantizes every tensor), sigmoid "
         "and softmax on TFLite's fixed grid (1/256, zero point -128), tanh on 1/128")
# outputs whose INT8 grid the TFLite kernels fix (ai-edge-quantizer's materialize_softmax_and_logistic / _tanh)
FIXED_GRID = {"sigmoid": (1.0 / 256, -128), "softmax": (1.0 / 256, -128), "_softmax": (1.0 / 256, -128),
              "tanh": (1.0 / 128, 0)}
# ops whose output is on its input's grid (TFLite gives them the input's scale): nothing to simulate there
SAME_GRID = ("view", "reshape", "_unsafe_view", "permute", "transpose", "t", "squeeze", "unsqueeze", "flatten",
             "expand", "slice", "select", "clone", "contiguous", "max_pool2d", "max_pool1d", "pad", "constant_pad_nd",
             "alias", "detach", "dropout", "identity")


def every_tensor_qat() -> tuple[Any, str]:
    """The XNNPACK QAT quantizer, then every float op output it left alone fake-quantized per tensor as well."""
    from torchao.quantization.pt2e.quantizer.composable_quantizer import ComposableQuantizer

    xnnpack, scheme = xnnpack_qat()
    return ComposableQuantizer([xnnpack, _every_output(xnnpack.global_config.output_activation)]), scheme + EVERY


def _every_output(spec: Any) -> Any:
    """A PT2E quantizer annotating the output of every float op not yet annotated (except SAME_GRID ops)."""
    import torch
    from torchao.quantization.pt2e.quantizer.quantizer import (
        Q_ANNOTATION_KEY,
        FixedQParamsQuantizationSpec,
        QuantizationAnnotation,
        Quantizer,
    )

    def fixed(scale: float, zero_point: int) -> Any:
        return FixedQParamsQuantizationSpec(torch.int8, scale, zero_point, -128, 127, torch.per_tensor_affine)

    class EveryOutput(Quantizer):
        def annotate(self, model: Any) -> Any:
            for node in model.graph.nodes:
                value = node.meta.get("val")
                name = getattr(getattr(node.target, "_overloadpacket", None), "__name__", str(node.target))
                name = name.split(".")[-1]
                if (node.op != "call_function" or Q_ANNOTATION_KEY in node.meta or name in SAME_GRID
                        or not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point):
                    continue
                grid = fixed(*FIXED_GRID[name]) if name in FIXED_GRID else spec  # the kernel's own grid, if fixed
                node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=grid, _annotated=True)
            return model

        def validate(self, model: Any) -> None:
            pass

    return EveryOutput()

