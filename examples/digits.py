"""A small CNN trained on scikit-learn's digits set (8x8 grey images, 10 classes), in seconds on a CPU.

Used by the bundled example and by the tests: no download, the data ships with scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU x2, pooling, two linear layers; `width` scales the channel counts."""

    def __init__(self, width: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_digits_split(seed: int = 0) -> dict[str, np.ndarray]:
    """Digits scaled to [0, 1], NCHW float32, split into train / calibration / eval sets."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return {
        "x_train": x[:1137], "y_train": y[:1137],
        "x_calib": x[1137:1437], "y_calib": y[1137:1437],
        "x_eval": x[1437:], "y_eval": y[1437:],
    }


def train_digits_cnn(width: int = 16, hidden: int = 64, epochs: int = 15, seed: int = 0) -> tuple[nn.Module, dict]:
    """Train a DigitsCNN with Adam; returns the model in eval mode and the data split."""
    torch.manual_seed(seed)
    data = load_digits_split(seed)
    return train_classifier(DigitsCNN(width, hidden), data, epochs, seed), data


def train_classifier(model: nn.Module, data: dict, epochs: int = 15, seed: int = 0) -> nn.Module:
    """Adam, cross-entropy, batches of 64 on x_train/y_train; returns the model in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
