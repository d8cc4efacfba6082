"""Small importable sources for tests of `module:callable` loading."""

import numpy as np


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


def inverse_model():
    """A model with an operator (matrix inverse) that has no ONNX export."""
    import torch

    class Inverse(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.inv(x)

    return Inverse()


def square_matrices():
    rng = np.random.default_rng(0)
    return [np.eye(4, dtype=np.float32) + 0.1 * rng.random((4, 4), dtype=np.float32) for _ in range(6)]


def broken_digits_cnn():
    """A digits CNN trained on the spot, then made INT8-hostile without changing its function."""
    from examples.digits import train_digits_cnn

    return int8_breaking_copy(train_digits_cnn(seed=0)[0])


def mixed_head_model(seed: int = 0):
    """A digits classifier whose single output concatenates box-like values (0..~600) with class scores (0..1):
    one INT8 scale for both would wipe out the scores."""
    import torch
    from torch import nn

    from examples.digits import train_digits_cnn

    base, _ = train_digits_cnn(seed=seed)

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
