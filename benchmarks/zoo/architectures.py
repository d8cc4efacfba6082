"""The model zoo: the architectures people ship, built with random weights (never downloaded) from torchvision 0.28,
timm and small definitions here, each with the inputs it takes.

The torchvision wheel on the package index is linked against CUDA torch: its C++ ops cannot load with the CPU torch
and `import torchvision` fails in its fake-kernel registrations. Its pure-Python model definitions work once that
module is stubbed before the import; this file is the only place that does it (`_torchvision`), and edgekit's own
code never imports torchvision. NMS and RoI ops stay unavailable, so detection models end before post-processing.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

FAMILIES = ("classification", "transformer", "detection", "segmentation", "sequence", "text")


@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple[int, ...]  # batch 1
    dtype: str = "float32"
    high: int = 0  # integer inputs: values in [0, high)


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str
    make: Callable[[], object]  # () -> nn.Module in eval mode, random weights
    inputs: tuple[Input, ...]
    source: str  # where the definition comes from
    note: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def build(self, seed: int = 0):
        """The model with random weights; batch-norm statistics re-estimated on random inputs (16 samples), so that
        activations keep realistic ranges through the depth (with the default running stats, a random MobileNetV3
        ends at outputs of ~1e-9, and every INT8 model of it is zero)."""
        import torch

        torch.manual_seed(seed)
        model = self.make()
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if norms:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a cumulative average over the batches
            model.train()
            samples = self.samples(16, seed=seed + 100)
            with torch.no_grad():
                for start in (0, 8):
                    model(*(torch.from_numpy(samples[i.name][start:start + 8]) for i in self.inputs))
        return model.eval()

    def samples(self, count: int, seed: int = 0) -> dict[str, np.ndarray]:
        """`count` random samples per input (floats ~N(0,1); integers in range); a stand-in for real data."""
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.inputs:
            shape = (count, *spec.shape[1:])
            if spec.dtype == "float32":
                out[spec.name] = rng.standard_normal(shape, dtype=np.float32)
            elif spec.name == "attention_mask":
                out[spec.name] = np.ones(shape, dtype=spec.dtype)
            else:
                out[spec.name] = rng.integers(0, spec.high, shape).astype(spec.dtype)
        return out


def _torchvision():
    """torchvision's model definitions without its C++ ops (see the module docstring)."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    return torchvision


def _tv(name: str, **kwargs) -> Callable[[], object]:
    def make():
        return getattr(_torchvision().models, name)(weights=None, **kwargs)

    return make


def _timm(name: str, **kwargs) -> Callable[[], object]:
    def make():
        _torchvision()
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)

    return make


def _image(size: int = 224) -> tuple[Input, ...]:
    return (Input("image", (1, 3, size, size)),)


# --- detection and segmentation heads --------------------------------------------------------------------------------


def _ssdlite():
    import torch

    tv = _torchvision()
    model = tv.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)

    class SSDLiteHeads(torch.nn.Module):
        """Backbone and heads of SSDLite; anchors decoding and NMS are post-processing the app does."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = model.backbone, model.head

        def forward(self, image):
            features = list(self.backbone(image).values())
            out = self.head(features)
            return out["bbox_regression"], out["cls_logits"]

    return SSDLiteHeads()


def _segmentation(name: str):
    import torch

    model = getattr(_torchvision().models.segmentation, name)(weights=None, weights_backbone=None)

    class Segmenter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image):
            return self.model(image)["out"]

    return Segmenter()


def _yolo_head():
    """A YOLOv8-style detector: a small CSP-ish backbone, three scales, a decoupled head whose box branch is a DFL
    (softmax over 16 bins, expectation) in pixels and whose class branch is sigmoid scores, concatenated: one
    output whose rows mix values up to ~640 with probabilities in 0..1."""
    import torch
    from torch import nn

    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

    class YoloStyle(nn.Module):
        def __init__(self, classes: int = 20, bins: int = 16) -> None:
            super().__init__()
            self.bins, self.classes = bins, classes
            self.stem = nn.Sequential(block(3, 32, 2), block(32, 64, 2), block(64, 64, 1))
            self.p3 = nn.Sequential(block(64, 128, 2), block(128, 128, 1))
            self.p4 = nn.Sequential(block(128, 256, 2), block(256, 256, 1))
            self.p5 = nn.Sequential(block(256, 384, 2), block(384, 384, 1))
            scales = (128, 256, 384)
            self.box = nn.ModuleList(nn.Sequential(block(c, 64, 1), nn.Conv2d(64, 4 * bins, 1)) for c in scales)
            self.cls = nn.ModuleList(nn.Sequential(block(c, 96, 1), nn.Conv2d(96, classes, 1)) for c in scales)
            self.register_buffer("project", torch.arange(bins, dtype=torch.float32))

        def forward(self, image):
            x = self.stem(image)
            p3 = self.p3(x)
            p4 = self.p4(p3)
            p5 = self.p5(p4)
            rows = []
            for feature, box, cls, stride in zip((p3, p4, p5), self.box, self.cls, (8, 16, 32)):
                b, _, h, w = feature.shape
                dist = box(feature).view(b, 4, self.bins, h * w).softmax(2)
                ltrb = (dist * self.project.view(1, 1, -1, 1)).sum(2) * stride  # DFL, in pixels
                ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                centre = torch.stack([xs, ys]).view(1, 2, -1).to(image.dtype) * stride + stride / 2
                boxes = torch.cat([centre - ltrb[:, :2], centre + ltrb[:, 2:]], 1)
                rows.append(torch.cat([boxes, cls(feature).view(b, self.classes, -1).sigmoid()], 1))
            return torch.cat(rows, 2)

    return YoloStyle()


# --- sequence and text -----------------------------------------------------------------------------------------------


def _kws_lstm():
    """A keyword spotter: 40 log-mel features x 49 frames, two LSTM layers, 12 keywords."""
    from torch import nn

    class KeywordLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(40, 256, num_layers=2, batch_first=True)
            self.fc = nn.Linear(256, 12)

        def forward(self, mel):
            out, _ = self.lstm(mel)
            return self.fc(out[:, -1])

    return KeywordLSTM()


def speaker_lstm(hidden: int = 256, seed: int = 0):
    """A speaker encoder of the published GE2E / Resemblyzer shape: 40 log-mel bins x 160 frames through a 3-layer
    LSTM, the last state through a linear layer and a ReLU, L2-normalised (1.4 M parameters at hidden 256). Not in
    ARCHITECTURES: its 160 unrolled steps make a conversion of minutes (benchmarks/bench_bias.py builds it)."""
    import torch
    from torch import nn

    class SpeakerEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(40, hidden, num_layers=3, batch_first=True)
            self.linear = nn.Linear(hidden, 256)

        def forward(self, mels):
            out, _ = self.lstm(mels)
            embed = torch.relu(self.linear(out[:, -1]))
            return embed / (embed.norm(dim=1, keepdim=True) + 1e-5)

    torch.manual_seed(seed)
    return SpeakerEncoder().eval()


def _gru():
    from torch import nn

    class SpeechGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(64, 192)
            self.gru = nn.GRU(192, 384, num_layers=2, batch_first=True)
            self.fc = nn.Linear(384, 35)

        def forward(self, features):
            out, _ = self.gru(self.proj(features).relu())
            return self.fc(out.mean(1))

    return SpeechGRU()


def _tcn():
    """A 1-D temporal conv net over raw-ish audio features: dilated residual blocks."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, channels: int, dilation: int) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation),
                                      nn.BatchNorm1d(channels), nn.ReLU(),
                                      nn.Conv1d(channels, channels, 1), nn.BatchNorm1d(channels))

        def forward(self, x):
            return (x + self.conv(x)).relu()

    class TCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv1d(40, 256, 3, padding=1)
            self.blocks = nn.Sequential(*(Block(256, d) for d in (1, 2, 4, 8, 16, 1, 2, 4)))
            self.fc = nn.Linear(256, 12)

        def forward(self, mel):
            return self.fc(self.blocks(self.stem(mel)).mean(2))

    return TCN()


def _m5():
    """M5 (Dai et al. 2017, "Very deep convolutional neural networks for raw waveforms"; the 1-D audio CNN of
    torchaudio's speech-commands tutorial): 1 s of 16 kHz audio in, an 80-tap stride-16 front conv, 12 keywords."""
    from torch import nn

    def block(inputs: int, outputs: int, kernel: int, stride: int = 1) -> list:
        return [nn.Conv1d(inputs, outputs, kernel, stride=stride), nn.BatchNorm1d(outputs), nn.ReLU(), nn.MaxPool1d(4)]

    class M5(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*block(1, 32, 80, 16), *block(32, 32, 3), *block(32, 64, 3),
                                          *block(64, 64, 3))
            self.fc = nn.Linear(64, 12)

        def forward(self, waveform):
            return self.fc(self.features(waveform).mean(2))

    return M5()


def _conformer():
    """One small conformer block (feed-forward, self-attention, depthwise conv module, feed-forward)."""
    from torch import nn

    class ConvModule(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim)
            self.pointwise1 = nn.Conv1d(dim, 2 * dim, 1)
            self.depthwise = nn.Conv1d(dim, dim, 15, padding=7, groups=dim)
            self.bn = nn.BatchNorm1d(dim)
            self.pointwise2 = nn.Conv1d(dim, dim, 1)

        def forward(self, x):
            y = nn.functional.glu(self.pointwise1(self.norm(x).transpose(1, 2)), dim=1)
            y = self.pointwise2(nn.functional.silu(self.bn(self.depthwise(y))))
            return x + y.transpose(1, 2)

    class Conformer(nn.Module):
        def __init__(self, dim: int = 256, heads: int = 4) -> None:
            super().__init__()
            self.inp = nn.Linear(80, dim)
            self.ff1 = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))
            self.attn_norm = nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.conv = ConvModule(dim)
            self.ff2 = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))
            self.out_norm = nn.LayerNorm(dim)
            self.fc = nn.Linear(dim, 29)

        def forward(self, features):
            x = self.inp(features)
            x = x + 0.5 * self.ff1(x)
            y = self.attn_norm(x)
            x = x + self.attn(y, y, y, need_weights=False)[0]
            x = self.conv(x)
            x = self.out_norm(x + 0.5 * self.ff2(x))
            return self.fc(x)

    return Conformer()


def _bert_tiny():
    """A BERT-tiny-sized encoder (2 layers, 128 hidden, 2 heads): int64 token ids and an attention mask in, the
    pooled [CLS] classification logits out."""
    import torch
    from torch import nn

    class BertTiny(nn.Module):
        def __init__(self, vocab: int = 30522, dim: int = 128, length: int = 64) -> None:
            super().__init__()
            self.tokens = nn.Embedding(vocab, dim)
            self.positions = nn.Embedding(length, dim)
            self.norm = nn.LayerNorm(dim)
            layer = nn.TransformerEncoderLayer(dim, 2, 4 * dim, dropout=0.0, activation="gelu", batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.pool = nn.Linear(dim, dim)
            self.fc = nn.Linear(dim, 2)

        def forward(self, input_ids, attention_mask):
            positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
            x = self.norm(self.tokens(input_ids) + self.positions(positions))
            bias = (1.0 - attention_mask.unsqueeze(1).unsqueeze(2).to(x.dtype)) * -1e4
            for layer in self.encoder.layers:
                x = layer(x, src_mask=bias.expand(-1, 2, x.shape[1], -1).reshape(-1, x.shape[1], x.shape[1]))
            return self.fc(torch.tanh(self.pool(x[:, 0])))

    return BertTiny()


def _mel(frames: int = 49, bins: int = 40) -> tuple[Input, ...]:
    return (Input("mel", (1, frames, bins)),)


ARCHITECTURES: tuple[Architecture, ...] = (
    # classification CNNs
    Architecture("mobilenet_v2", "classification", _tv("mobilenet_v2"), _image(), "torchvision"),
    Architecture("mobilenet_v3_small", "classification", _tv("mobilenet_v3_small"), _image(), "torchvision"),
    Architecture("mobilenet_v3_large", "classification", _tv("mobilenet_v3_large"), _image(), "torchvision"),
    Architecture("resnet18", "classification", _tv("resnet18"), _image(), "torchvision"),
    Architecture("resnet50", "classification", _tv("resnet50"), _image(), "torchvision"),
    Architecture("efficientnet_b0", "classification", _tv("efficientnet_b0"), _image(), "torchvision"),
    Architecture("shufflenet_v2", "classification", _tv("shufflenet_v2_x1_0"), _image(), "torchvision"),
    Architecture("squeezenet1_1", "classification", _tv("squeezenet1_1"), _image(), "torchvision"),
    Architecture("mnasnet", "classification", _tv("mnasnet1_0"), _image(), "torchvision"),
    Architecture("regnet_y_400mf", "classification", _tv("regnet_y_400mf"), _image(), "torchvision"),
    Architecture("convnext_tiny", "classification", _tv("convnext_tiny"), _image(), "torchvision"),
    Architecture("ghostnet", "classification", _timm("ghostnet_100"), _image(), "timm"),
    Architecture("mobileone_s0", "classification", _timm("mobileone_s0"), _image(), "timm"),
    # transformers
    Architecture("deit_tiny", "transformer", _timm("deit_tiny_patch16_224"), _image(), "timm"),
    Architecture("mobilevit_xxs", "transformer", _timm("mobilevit_xxs"), _image(256), "timm"),
    Architecture("levit_128s", "transformer", _timm("levit_128s"), _image(), "timm"),
    Architecture("swin_t", "transformer", _tv("swin_t"), _image(), "torchvision"),
    # detection and segmentation
    Architecture("ssdlite320_mobilenet_v3", "detection", _ssdlite, _image(320), "torchvision",
                 note="backbone + heads; anchor decoding and NMS left to the app"),
    Architecture("yolo_style_dfl", "detection", _yolo_head, _image(320), "edgekit zoo",
                 note="boxes (pixels, DFL) and sigmoid scores concatenated"),
    Architecture("lraspp_mobilenet_v3", "segmentation", lambda: _segmentation("lraspp_mobilenet_v3_large"),
                 _image(), "torchvision"),
    Architecture("deeplabv3_mobilenet_v3", "segmentation",
                 lambda: _segmentation("deeplabv3_mobilenet_v3_large"), _image(), "torchvision"),
    # sequence
    Architecture("kws_lstm", "sequence", _kws_lstm, _mel(), "edgekit zoo"),
    Architecture("speech_gru", "sequence", _gru, (Input("features", (1, 100, 64)),), "edgekit zoo"),
    Architecture("tcn_1d", "sequence", _tcn, (Input("mel", (1, 40, 101)),), "edgekit zoo"),
    Architecture("m5_audio", "sequence", _m5, (Input("waveform", (1, 1, 16000)),), "edgekit zoo",
                 note="raw 16 kHz waveform in"),
    Architecture("conformer_block", "sequence", _conformer, (Input("features", (1, 100, 80)),), "edgekit zoo"),
    # text
    Architecture("bert_tiny", "text", _bert_tiny,
                 (Input("input_ids", (1, 64), "int64", 30522), Input("attention_mask", (1, 64), "int64", 2)),
                 "edgekit zoo", note="int64 ids and mask pass through unquantized"),
    # more of what ships
    Architecture("densenet121", "classification", _tv("densenet121"), _image(), "torchvision"),
    Architecture("regnet_x_400mf", "classification", _tv("regnet_x_400mf"), _image(), "torchvision"),
    Architecture("efficientnet_b1", "classification", _tv("efficientnet_b1"), _image(240), "torchvision"),
    Architecture("mobilenetv4_conv_small", "classification", _timm("mobilenetv4_conv_small"), _image(), "timm"),
    Architecture("efficientformer_l1", "transformer", _timm("efficientformer_l1"), _image(), "timm"),
    Architecture("convnextv2_atto", "classification", _timm("convnextv2_atto"), _image(), "timm"),
)


def get(name: str) -> Architecture:
    found = {a.name: a for a in ARCHITECTURES}
    if name not in found:
        raise KeyError(f"no zoo architecture {name!r}; known: {', '.join(found)}")
    return found[name]


def __getattr__(name: str):
    """`benchmarks.zoo.architectures:<name>_model` is a factory the edgekit CLI can load (random weights, seed 0)."""
    if name.endswith("_model"):
        arch = get(name[: -len("_model")])
        return lambda: arch.build()
    raise AttributeError(name)
