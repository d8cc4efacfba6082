"""The op conformance cases: one small PyTorch module per op family and attribute that matters to a converter.

Each case is a factory (a fresh module, seeded) and its input shapes without the batch. Inputs are standard
normal, so every case sees negative values; `positive` cases take |x| + 0.1 (sqrt, log, pow).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


class Fn(nn.Module):
    """A module around a function, so functional ops get a case without a class each."""

    def __init__(self, fn: Callable, *children: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.children_ = nn.ModuleList(children)

    def forward(self, *xs):
        return self.fn(*xs, *self.children_)


class Recurrent(nn.Module):
    """LSTM/GRU over a sequence; returns the whole output sequence."""

    def __init__(self, cell: type, **kwargs) -> None:
        super().__init__()
        self.rnn = cell(input_size=8, hidden_size=12, batch_first=True, **kwargs)

    def forward(self, x):
        return self.rnn(x)[0]


@dataclass(frozen=True)
class Case:
    """One op/attribute case and what the suite expects of it: exact, exact after `repair`, or a clear
    `unsupported` error (a fragment of its message)."""

    name: str  # family/attribute, e.g. "conv2d/depthwise"
    factory: Callable[[], nn.Module]
    shapes: tuple[tuple[int, ...], ...]
    positive: bool = False
    repair: str | None = None
    unsupported: str | None = None

    @property
    def family(self) -> str:
        return self.name.split("/")[0]

    def module(self) -> nn.Module:
        torch.manual_seed(0)
        return self.factory().eval()


def _case(name: str, factory: Callable[[], nn.Module], *shapes: tuple[int, ...], positive: bool = False) -> Case:
    return Case(name, factory, tuple(shapes) or (IMG,), positive)


IMG = (4, 10, 12)  # channels, height and width all differ: onnx2tf guesses layouts from sizes
SEQ = (6, 8)

CONVOLUTIONS = [
    _case("conv2d/3x3-pad1", lambda: nn.Conv2d(4, 8, 3, padding=1)),
    _case("conv2d/stride2-nopad", lambda: nn.Conv2d(4, 8, 3, stride=2)),
    _case("conv2d/groups2", lambda: nn.Conv2d(4, 8, 3, padding=1, groups=2)),
    _case("conv2d/depthwise", lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4)),
    _case("conv2d/depthwise-multiplier2", lambda: nn.Conv2d(4, 8, 3, padding=1, groups=4)),
    _case("conv2d/dilation2", lambda: nn.Conv2d(4, 8, 3, padding=2, dilation=2)),
    _case("conv2d/padding-same", lambda: nn.Conv2d(4, 8, 4, padding="same")),
    _case("conv2d/asymmetric-kernel-stride", lambda: nn.Conv2d(4, 8, (1, 3), stride=(2, 1), padding=(0, 1))),
    _case("conv2d/padding-mode-reflect", lambda: nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect")),
    _case("conv2d/padding-mode-replicate", lambda: nn.Conv2d(4, 8, 3, padding=1, padding_mode="replicate")),
    _case("conv2d/padding-mode-circular", lambda: nn.Conv2d(4, 8, 3, padding=1, padding_mode="circular")),
    _case("conv1d/k3-pad1", lambda: nn.Conv1d(4, 8, 3, padding=1), (4, 16)),
    _case("conv1d/dilation2-groups2", lambda: nn.Conv1d(4, 8, 3, padding=2, dilation=2, groups=2), (4, 16)),
    _case("conv1d/depthwise-stride2", lambda: nn.Conv1d(4, 4, 5, stride=2, padding=2, groups=4), (4, 16)),
    _case("convtranspose2d/stride2", lambda: nn.ConvTranspose2d(4, 8, 2, stride=2)),
    _case("convtranspose2d/k3-s2-p1-outpad1", lambda: nn.ConvTranspose2d(4, 8, 3, stride=2, padding=1,
                                                                           output_padding=1)),
    _case("convtranspose2d/groups2", lambda: nn.ConvTranspose2d(4, 8, 3, stride=1, padding=1, groups=2)),
    _case("convtranspose1d/k4-s2-p1", lambda: nn.ConvTranspose1d(4, 8, 4, stride=2, padding=1), (4, 16)),
]

POOLING = [
    _case("maxpool2d/k2-s2", lambda: nn.MaxPool2d(2)),
    _case("maxpool2d/k3-s2-pad1", lambda: nn.MaxPool2d(3, 2, padding=1)),
    _case("maxpool2d/k3-s2-pad1-ceil", lambda: nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), (4, 9, 11)),
    _case("maxpool2d/k3-s2-ceil", lambda: nn.MaxPool2d(3, 2, ceil_mode=True), (4, 9, 11)),
    _case("maxpool2d/k3-s1-pad1-same", lambda: nn.MaxPool2d(3, 1, padding=1)),
    _case("maxpool2d/k3-s2-pad1-channels-equal-spatial", lambda: nn.MaxPool2d(3, 2, padding=1), (4, 4, 4)),
    _case("maxpool2d/k3-pad1-dilation2", lambda: nn.MaxPool2d(3, 1, padding=1, dilation=2)),
    _case("maxpool1d/k3-s2-pad1", lambda: nn.MaxPool1d(3, 2, padding=1), (4, 16)),
    _case("avgpool2d/k2-s2", lambda: nn.AvgPool2d(2)),
    _case("avgpool2d/k3-s2-pad1-count-include-pad", lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=True)),
    _case("avgpool2d/k3-s2-pad1-exclude-pad", lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)),
    _case("avgpool2d/k3-s1-pad1-same", lambda: nn.AvgPool2d(3, 1, padding=1)),
    _case("avgpool2d/k3-s2-ceil", lambda: nn.AvgPool2d(3, 2, ceil_mode=True), (4, 9, 11)),
    _case("avgpool1d/k3-s1-pad1", lambda: nn.AvgPool1d(3, 1, padding=1), (4, 16)),
    _case("adaptive-avgpool2d/to-5x4", lambda: nn.AdaptiveAvgPool2d((5, 4))),
    _case("adaptive-maxpool2d/to-2x3", lambda: nn.AdaptiveMaxPool2d((2, 3))),
    _case("global-avgpool2d/keepdim", lambda: nn.AdaptiveAvgPool2d(1)),
    _case("global-maxpool2d/amax", lambda: Fn(lambda x: x.amax(dim=(2, 3)))),
]

ACTIVATIONS = [
    _case("relu/relu", lambda: nn.ReLU()),
    _case("relu6/relu6", lambda: nn.ReLU6()),
    _case("prelu/per-channel", lambda: nn.PReLU(4, init=0.2)),
    _case("prelu/shared", lambda: nn.PReLU(1, init=0.3)),
    _case("leakyrelu/slope0.1", lambda: nn.LeakyReLU(0.1)),
    _case("hardswish/hardswish", lambda: nn.Hardswish()),
    _case("hardsigmoid/hardsigmoid", lambda: nn.Hardsigmoid()),
    _case("silu/silu", lambda: nn.SiLU()),
    _case("gelu/erf", lambda: nn.GELU()),
    _case("gelu/tanh", lambda: nn.GELU(approximate="tanh")),
    _case("sigmoid/sigmoid", lambda: nn.Sigmoid()),
    _case("tanh/tanh", lambda: nn.Tanh()),
    _case("elu/alpha1", lambda: nn.ELU()),
    _case("softmax/4d-channel-axis", lambda: nn.Softmax(dim=1)),
    _case("softmax/4d-last-axis", lambda: nn.Softmax(dim=-1)),
    _case("softmax/4d-height-axis", lambda: nn.Softmax(dim=2)),
    _case("softmax/2d", lambda: nn.Softmax(dim=1), (10,)),
    _case("log-softmax/2d", lambda: nn.LogSoftmax(dim=1), (10,)),
]

NORMALISATIONS = [
    _case("batchnorm2d/eval", lambda: _bn(nn.BatchNorm2d(4))),
    _case("batchnorm1d/eval", lambda: _bn(nn.BatchNorm1d(4)), (4, 16)),
    _case("layernorm/last-dim", lambda: nn.LayerNorm(8), SEQ),
    _case("layernorm/channels-last-4d", lambda: Fn(lambda x, n: n(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
                                                    nn.LayerNorm(16)), (16, 10, 12)),
    _case("layernorm/chw", lambda: nn.LayerNorm([4, 10, 12])),
    _case("groupnorm/2-groups", lambda: nn.GroupNorm(2, 4)),
    _case("instancenorm2d/affine", lambda: nn.InstanceNorm2d(4, affine=True)),
]

LINEAR = [
    _case("linear/2d", lambda: nn.Linear(16, 10), (16,)),
    _case("linear/3d-input", lambda: nn.Linear(8, 12), SEQ),
    _case("matmul/two-inputs", lambda: Fn(torch.matmul), (6, 8), (8, 5)),
    _case("matmul/weight-constant", lambda: Fn(lambda x, m: x @ m.weight.T, nn.Linear(8, 4, bias=False)), SEQ),
]

TENSORS = [
    _case("concat/channel", lambda: Fn(lambda x, c: torch.cat([x, c(x)], dim=1), nn.Conv2d(4, 4, 1))),
    _case("concat/last-axis", lambda: Fn(lambda x: torch.cat([x, -x], dim=-1))),
    _case("split/channel-chunks", lambda: Fn(lambda x: torch.chunk(x, 2, dim=1)[1] * 2.0)),
    _case("slice/channels-and-strided-hw", lambda: Fn(lambda x: x[:, 1:, ::2, 1:7])),
    _case("slice/hw-only", lambda: Fn(lambda x: x[:, :, 2:, 1:7])),
    _case("flatten/after-conv", lambda: Fn(lambda x, c: torch.flatten(c(x), 1), nn.Conv2d(4, 2, 3))),
    _case("reshape/channels-to-sequence", lambda: Fn(lambda x: x.reshape(x.shape[0], 4, 120).permute(0, 2, 1))),
    _case("permute/nchw-to-nhwc", lambda: Fn(lambda x: x.permute(0, 2, 3, 1))),
    _case("transpose/hw", lambda: Fn(lambda x: x.transpose(2, 3))),
    _case("pixelshuffle/x2", lambda: nn.PixelShuffle(2)),
]

RESIZE = [
    _case("resize/nearest-x2", lambda: nn.Upsample(scale_factor=2, mode="nearest")),
    _case("resize/bilinear-x2", lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)),
    _case("resize/bilinear-x2-align-corners", lambda: nn.Upsample(scale_factor=2, mode="bilinear",
                                                                  align_corners=True)),
    _case("resize/bilinear-to-size", lambda: nn.Upsample(size=(5, 11), mode="bilinear", align_corners=False)),
    _case("resize/nearest-to-size", lambda: nn.Upsample(size=(15, 30), mode="nearest")),
    _case("resize/bicubic-x2", lambda: nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False)),
]

PADDING = [
    _case("pad/constant-value", lambda: Fn(lambda x: F.pad(x, (1, 2, 0, 1), value=0.5))),
    _case("pad/reflect", lambda: Fn(lambda x: F.pad(x, (1, 2, 2, 1), mode="reflect"))),
    _case("pad/replicate", lambda: Fn(lambda x: F.pad(x, (1, 2, 2, 1), mode="replicate"))),
]

ELEMENTWISE = [
    _case("add/broadcast-channel", lambda: Fn(lambda x: x + torch.arange(4.0).reshape(1, 4, 1, 1))),
    _case("mul/two-inputs-broadcast", lambda: Fn(lambda x, y: x * y), IMG, (4, 1, 12)),
    _case("sub-div/broadcast-row", lambda: Fn(lambda x, y: (x - y) / (y.abs() + 1.0)), IMG, (1, 1, 12)),
    _case("mul/constant-channels-equal-spatial", lambda: Fn(lambda x: x * torch.linspace(0.5, 2, 16).reshape(
        1, 1, 4, 4)), (4, 4, 4)),
    _case("min-max-clamp/mixed", lambda: Fn(lambda x: torch.clamp(torch.maximum(x, -x * 0.5), -0.7, 1.3))),
    _case("abs-neg-exp/mixed", lambda: Fn(lambda x: torch.exp(-x.abs()) - x)),
    _case("pow-sqrt-log/positive", lambda: Fn(lambda x: torch.sqrt(x) + x.pow(1.5) + torch.log(x)), positive=True),
]

REDUCTIONS = [
    _case("mean/hw-keepdim", lambda: Fn(lambda x: x.mean(dim=(2, 3), keepdim=True))),
    _case("sum/channel", lambda: Fn(lambda x: x.sum(dim=1))),
    _case("max/channel", lambda: Fn(lambda x: x.amax(dim=1, keepdim=True))),
    _case("min/last-axis", lambda: Fn(lambda x: x.amin(dim=-1))),
]

MULTI_IO = [
    _case("multi-io/two-in-two-out", lambda: Fn(lambda x, y, c: (c(x) + y, (x * y).mean(dim=1)), nn.Conv2d(4, 4, 1)),
          IMG, IMG),
]

RECURRENT = [
    _case("lstm/one-layer", lambda: Recurrent(nn.LSTM), SEQ),
    _case("gru/one-layer", lambda: Recurrent(nn.GRU), SEQ),
    _case("lstm/bidirectional", lambda: Recurrent(nn.LSTM, bidirectional=True), SEQ),
    _case("lstm/65-steps-not-unrolled", lambda: Recurrent(nn.LSTM), (65, 8)),
]


def _bn(norm: nn.Module) -> nn.Module:
    """BatchNorm with non-trivial running statistics and affine parameters."""
    with torch.no_grad():
        count = norm.num_features
        norm.running_mean.copy_(torch.linspace(-0.5, 0.5, count))
        norm.running_var.copy_(torch.linspace(0.5, 2.0, count))
        norm.weight.copy_(torch.linspace(0.8, 1.2, count))
        norm.bias.copy_(torch.linspace(-0.2, 0.2, count))
    return norm


# What onnx2tf 1.29.24 gets wrong, as measured by this suite: the repair that fixes it ...
REPAIRED = {
    "conv2d/padding-mode-circular": "wrap-pad-as-concat",
    "maxpool2d/k3-s2-pad1": "maxpool-pads-as-edge-pad",
    "maxpool1d/k3-s2-pad1": "maxpool-pads-as-edge-pad",
    "avgpool2d/k3-s2-pad1-count-include-pad": "avgpool-pads-as-depthwise-conv",
    "avgpool2d/k3-s2-pad1-exclude-pad": "avgpool-pads-as-depthwise-conv",
    "avgpool2d/k3-s1-pad1-same": "avgpool-pads-as-depthwise-conv",
    "avgpool1d/k3-s1-pad1": "avgpool-pads-as-depthwise-conv",
    "gelu/erf": "erf-as-polynomial",
    "layernorm/chw": "layernorm-as-reductions",
    "slice/channels-and-strided-hw": "slice-channels-as-gather",
    "resize/bilinear-x2-align-corners": "resize-as-matmul",
    "resize/nearest-to-size": "resize-as-matmul",
    "lstm/one-layer": "recurrent-unrolled",
    "gru/one-layer": "recurrent-unrolled",
    "lstm/bidirectional": "recurrent-unrolled",
}
# For each repair, the case whose conversion goes most visibly wrong without it.
SHOWCASES = {
    "maxpool-pads-as-edge-pad": "maxpool2d/k3-s2-pad1",
    "avgpool-pads-as-depthwise-conv": "avgpool2d/k3-s2-pad1-exclude-pad",
    "resize-as-matmul": "resize/bilinear-x2-align-corners",
    "slice-channels-as-gather": "slice/channels-and-strided-hw",
    "wrap-pad-as-concat": "conv2d/padding-mode-circular",
    "erf-as-polynomial": "gelu/erf",
    "layernorm-as-reductions": "layernorm/chw",
    "recurrent-unrolled": "lstm/one-layer",
}
# ... or, where no repair exists, a fragment of the clear error the build stops with.
UNSUPPORTED = {
    "maxpool2d/k3-pad1-dilation2": "TensorFlow Select ops that LiteRT on a phone cannot run: FlexDilation2D",
    "resize/bicubic-x2": "TensorFlow Select ops that LiteRT on a phone cannot run: FlexResizeBicubic",
    "mul/constant-channels-equal-spatial": "first diverging ONNX node node_mul (Mul)",
    "maxpool2d/k3-s2-pad1-channels-equal-spatial": "first diverging ONNX node node_max_pool2d (MaxPool)",
    "lstm/65-steps-not-unrolled": "onnx2tf crashed (SIGSEGV) while quantizing to INT8",
}
CASES: list[Case] = [replace(case, repair=REPAIRED.get(case.name), unsupported=UNSUPPORTED.get(case.name))
                     for case in (*CONVOLUTIONS, *POOLING, *ACTIVATIONS, *NORMALISATIONS, *LINEAR, *TENSORS, *RESIZE,
                                  *PADDING, *ELEMENTWISE, *REDUCTIONS, *MULTI_IO, *RECURRENT)]
BY_NAME = {case.name: case for case in CASES}
