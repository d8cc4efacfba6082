"""Outputs judged by what the app does with them, through real builds: a joined boxes + scores output whose scores
INT8 destroys fails the default gate by its part; an L2-normalised output is an embedding with nothing said."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgekit
from edgekit.measure.drift import failure_reasons

OPTIONS = edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"))


class JoinedHead(nn.Module):
    """(N, 4 + 3, 64): box rows in pixels (0..640) above sigmoid class-score rows, one tensor, as YOLO heads join
    them; INT8 gives the join one scale (640/255), which rounds every score to 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.boxes, self.scores = nn.Conv2d(16, 4, 1), nn.Conv2d(16, 3, 1)

    def forward(self, image):
        x = self.features(image)
        boxes = torch.sigmoid(self.boxes(x)).flatten(2) * 640.0
        return torch.cat([boxes, torch.sigmoid(self.scores(x) * 4.0).flatten(2)], 1)


class Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 32))

    def forward(self, frames):
        return nn.functional.normalize(self.net(frames), dim=1)


def test_a_joined_output_whose_scores_int8_destroys_fails_by_its_part(tmp_path: Path):
    x = np.random.default_rng(0).standard_normal((48, 3, 32, 32)).astype(np.float32)
    result = edgekit.build(JoinedHead(), "onnxruntime-arm64-int8", x[:32], x[32:], tmp_path / "b", options=OPTIONS)
    row = result.report["drift"]["outputs"][0]
    parts = {p["name"]: p["sqnr_db"] for p in row["parts"]}
    assert row["task"] == "regress" and set(parts) == {"rows 0-3", "rows 4-6"}
    assert row["sqnr_db"] > 20.0  # the whole tensor passes the floor: the boxes carry its energy
    assert parts["rows 4-6"] < 20.0 <= parts["rows 0-3"]
    assert not result.passed and result.report["drift"]["passed"] is False
    assert failure_reasons(result.report["drift"])[0].startswith("output output part rows 4-6 SQNR")


def test_an_l2_normalised_output_is_an_embedding_with_nothing_said(tmp_path: Path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 40)).astype(np.float32)
    result = edgekit.build(Embedder(), "onnxruntime-arm64-int8", x[:64], x[64:], tmp_path / "e", options=OPTIONS)
    row = result.report["drift"]["outputs"][0]
    assert row["task"] == "embed" and result.report["drift"]["top1_agreement"] is None
    assert row["neighbour_agreement"] >= 0.9 and row["cosine_min"] > 0.95
    assert not any("class scores" in w for w in result.report["warnings"])
    assert result.manifest["device"]["tolerances"]["tasks"] == {"output": "embed"}


class SpeakerEncoder(nn.Module):
    """A GE2E-style speaker encoder, shrunk: stacked LSTM over mel frames, last step, projection, L2-normalised."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(40, 48, num_layers=3, batch_first=True)
        self.proj = nn.Linear(48, 64)

    def forward(self, mels):
        out, _ = self.lstm(mels)
        return nn.functional.normalize(torch.relu(self.proj(out[:, -1])), dim=1)


@pytest.mark.slow
@pytest.mark.parametrize("converter", ["litert-torch"])
def test_a_stacked_lstm_encoder_is_built_honestly_or_refused_by_op(converter, tmp_path: Path):
    """The converter either builds it, measured as an embedding (nothing said), and says why its INT8 file is not
    much smaller than its float one when it is not; or refuses it, naming the op (exit 2). onnx2tf refuses it
    naming ReduceL2 (the L2 normalisation) after 90 s here; litert-torch builds it in 15 s."""
    x = np.random.default_rng(2).standard_normal((32, 20, 40)).astype(np.float32)
    options = edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                   conversion=edgekit.Conversion(converter=converter, equalize="off"))
    try:
        result = edgekit.build(SpeakerEncoder(), "android-arm64-int8", x[:20], x[20:], tmp_path / "b",
                               options=options)
    except edgekit.UnsupportedError as refused:
        assert refused.exit_code == 2 and ("LSTM" in refused.message or "cannot convert ONNX node" in refused.message)
        return
    row, size = result.report["drift"]["outputs"][0], result.report["size"]
    assert row["task"] == "embed" and row["neighbour_agreement"] is not None and row["sqnr_db"] > 15.0
    notes = [w for w in result.report["warnings"] if w.startswith("the INT8 model is")]
    assert bool(notes) == (size["device_bytes"] > 0.5 * size["float_device_bytes"])
