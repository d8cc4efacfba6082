"""The PT2E quantizers whose QAT fake quantization matches a route's INT8 build (`Route.qat_quantizer`).

Every INT8 route here quantizes weights per output channel, symmetric on [-127, 127], and activations per tensor
on 8 bits: affine on LiteRT (ai-edge-quantizer), ONNX Runtime (QUInt8, the same grid shifted), OpenVINO and
ExecuTorch (XNNPACK); symmetric on TensorRT. The XNNPACK quantizer's QAT configuration is exactly that (its
patterns: convolutions and linear layers with their ReLUs, adds, pools); TensorRT gets the same with symmetric
activations."""

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

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    if symmetric_activations:
        config = _symmetric(config)
    return XNNPACKQuantizer().set_global(config), SYMMETRIC if symmetric_activations else AFFINE


def _symmetric(config: Any) -> Any:
    import torch

    def symmetric(spec: Any) -> Any:
        return None if spec is None else dataclasses.replace(spec, qscheme=torch.per_tensor_symmetric)

    return dataclasses.replace(config, input_activation=symmetric(config.input_activation),
                               output_activation=symmetric(config.output_activation))
