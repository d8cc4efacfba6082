"""Small importable sources for tests of `module:callable` loading, and the shipped digits CNNs.

The digits CNNs are never trained on the spot: float rounding in training differs between CPUs, so a model trained
here gives other weights (and other accuracy drops) on another machine. Their trained weights ship with the
repository (examples/01_android_int8/digits_cnn.pt2, examples/03_compress/digits_cnn_wide.pt): the same model on
every machine. `python examples/01_android_int8/make_model.py` and `python examples/03_compress/model.py`
re-create them.
"""

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS_PT2 = ROOT / "examples" / "01_android_int8" / "digits_cnn.pt2"  # DigitsCNN(16, 64), ExportedProgram
WIDE_WEIGHTS = ROOT / "examples" / "03_compress" / "digits_cnn_wide.pt"  # DigitsCNN(48, 256), state_dict


def shipped_digits_cnn():
    """The DigitsCNN (width 16, hidden 64; ~99 % eval accuracy) with the weights of the shipped digits_cnn.pt2."""
    import torch

    from examples.digits import DigitsCNN

    model = DigitsCNN()
    model.load_state_dict(torch.export.load(DIGITS_PT2).state_dict)
    return model.eval()


def shipped_wide_digits_cnn():
    """The DigitsCNN at width 48 / hidden 256 (438,378 parameters) with the shipped weights of example 03."""
    import torch

    from examples.digits import DigitsCNN

    model = DigitsCNN(width=48, hidden=256)
    model.load_state_dict(torch.load(WIDE_WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


def digits_samples():
    rng = np.random.default_rng(0)
    return [rng.random((1, 8, 8), dtype=np.float32) for _ in range(10)]


def int8_breaking_copy(model, factor: float = 1000.0):
    """The same function with channel 0 of the first block's activations scaled by `factor` (and the next conv's
    input weights for that channel divided by it): per-tensor INT8 activations then lose every other channel."""
    import copy

    import torch

    broken = copy.deepcopy(model)
    bn, conv = broken.features[1], broken.features[3]
    with torch.no_grad():
        bn.weight[0] *= factor
        bn.bias[0] *= factor
        conv.weight[:, 0] /= factor
    return broken.eval()


def pooled_breaking_copy(model, factor: float = 1000.0):
    """The same function with channel 0 of the second block's activations scaled by `factor` and the first linear
    layer's inputs from that channel divided by it. That activation, the max-pool after it and the flattened input
    of the linear layer share one INT8 scale on every route: moving any one of them to float alone changes
    nothing, the group must move together."""
    import copy

    import torch

    broken = copy.deepcopy(model)
    bn, linear = broken.features[4], broken.classifier[1]
    per_channel = linear.in_features // bn.num_features  # the flattened (C, 4, 4) pooled map
    with torch.no_grad():
        bn.weight[0] *= factor
        bn.bias[0] *= factor
        linear.weight[:, :per_channel] /= factor
    return broken.eval()


def inverse_model():
    """A model with an operator (matrix inverse) that has no ONNX export."""
    import torch

    class Inverse(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.inv(x)

    return Inverse()


def square_matrices():
    rng = np.random.default_rng(0)
    return [np.eye(4, dtype=np.float32) + 0.1 * rng.random((4, 4), dtype=np.float32) for _ in range(12)]


def broken_digits_cnn():
    """The shipped digits CNN, made INT8-hostile without changing its function."""
    return int8_breaking_copy(shipped_digits_cnn())


def two_scale_head_model(seed: int = 0):
    """mixed_head_model at two "scales" whose [boxes, scores] concats are joined along a new anchor axis, as a
    detector joins its per-scale heads: output (N, 14, 2)."""
    import torch
    from torch import nn

    single = mixed_head_model(seed)

    class TwoScales(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = single
            self.other = nn.Linear(10, 4)

        def forward(self, x):
            first = self.head(x)
            logits = self.head.net(x)
            boxes = torch.relu(self.other(logits)) * 40.0 + 60.0
            second = torch.cat([boxes, torch.softmax(logits * 0.5, dim=1)], dim=1)
            return torch.cat([first.unsqueeze(2), second.unsqueeze(2)], dim=2)

    torch.manual_seed(seed + 1)
    return TwoScales().eval()


def mixed_head_model(seed: int = 0):
    """The shipped digits classifier with a single output that concatenates box-like values (0..~600) with class
    scores (0..1): one INT8 scale for both would wipe out the scores. `seed` draws the box head's weights."""
    import torch
    from torch import nn

    base = shipped_digits_cnn()

    class MixedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = base
            self.boxes = nn.Linear(10, 4)

        def forward(self, x):
            logits = self.net(x)
            boxes = torch.relu(self.boxes(logits)) * 50.0 + 100.0
            return torch.cat([boxes, torch.softmax(logits, dim=1)], dim=1)

    torch.manual_seed(seed)
    return MixedHead().eval()


def digits_killing_its_ray_worker():
    """The digits CNN, but the first call (no file at $EDGEKIT_TEST_KILL_MARKER yet) writes the marker, kills the
    process that started this build (a Ray worker, in tests/build_matrix/test_matrix.py) and exits: a worker that dies
    mid-build. With $EDGEKIT_TEST_KILL_ALWAYS set, every call does it."""
    import os
    import signal
    from pathlib import Path

    marker = Path(os.environ["EDGEKIT_TEST_KILL_MARKER"])
    if os.environ.get("EDGEKIT_TEST_KILL_ALWAYS") or not marker.exists():
        with open(marker, "a") as handle:
            handle.write("killed\n")
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)
    return shipped_digits_cnn()
