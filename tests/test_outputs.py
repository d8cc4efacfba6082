"""Several outputs keep the names the PyTorch model gives them (dict keys, namedtuple fields) in report.json,
manifest.json and the golden files; a plain tuple gets output_0..k."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch

import edgekit

Face = collections.namedtuple("Face", ["landmarks", "face_prob"])


class Heads(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.box, self.cls = torch.nn.Linear(8, 4), torch.nn.Linear(8, 5)

    def forward(self, x):
        h = self.conv(x).relu().mean((2, 3))
        box, scores = self.box(h), self.cls(h).softmax(1)
        if self.kind == "dict":
            return {"bbox_reg": box, "scores": scores}
        if self.kind == "namedtuple":
            return Face(box, scores)
        return box, scores


def _model(kind: str) -> Heads:
    torch.manual_seed(0)
    return Heads(kind).eval()


@pytest.mark.parametrize(("kind", "target", "names"), [
    ("dict", "android-arm64-int8", ["bbox_reg", "scores"]),
    ("namedtuple", "onnxruntime-arm64-int8", ["landmarks", "face_prob"]),
    ("tuple", "onnxruntime-arm64-fp32", ["output_0", "output_1"]),
])
def test_output_names_come_from_the_model(kind, target, names, tmp_path: Path):
    x = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    result = edgekit.build(_model(kind), target, x[:32], x[32:], tmp_path / kind, emulator="host", max_drop=100.0,
                           min_agreement=0.0)
    assert [o["name"] for o in result.report["drift"]["outputs"]] == names
    assert [o["name"] for o in result.report["conversion"]["outputs"]] == names
    assert [o["name"] for o in result.manifest["device"]["signature"]["outputs"]] == names
    with np.load(tmp_path / kind / "golden" / "outputs.npz") as golden:
        assert sorted(golden) == sorted(f"{side}/{n}" for side in ("reference", "device") for n in names)
