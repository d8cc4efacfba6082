"""Shared fixtures: a digits CNN trained on the spot, its data as files, and one INT8 bundle built once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # examples/ is importable as a package from the tests

from examples.digits import train_digits_cnn  # noqa: E402

EXAMPLE = ROOT / "examples" / "01_android_int8"


@pytest.fixture(scope="session")
def digits():
    """(model, data): the DigitsCNN trained for 15 epochs on scikit-learn's digits, ~99 % eval accuracy."""
    return train_digits_cnn(seed=0)


@pytest.fixture(scope="session")
def digits_files(digits, tmp_path_factory) -> dict[str, Path]:
    """The digits model as .pt2 and TorchScript, with calibration and eval data as .npz files."""
    import torch

    model, data = digits
    folder = tmp_path_factory.mktemp("digits")
    example = (torch.from_numpy(data["x_calib"][:1]),)
    torch.export.save(torch.export.export(model, example), folder / "net.pt2")
    torch.jit.save(torch.jit.trace(model, example), folder / "net.pt")
    np.savez(folder / "calib.npz", x=data["x_calib"], y=data["y_calib"])
    np.savez(folder / "eval.npz", x=data["x_eval"], y=data["y_eval"])
    return {"pt2": folder / "net.pt2", "ts": folder / "net.pt", "calib": folder / "calib.npz",
            "eval": folder / "eval.npz", "folder": folder}


@pytest.fixture(scope="session")
def int8_bundle(digits, tmp_path_factory):
    """One android-arm64-int8 build of the digits CNN through the Python API, host-measured, shared by tests."""
    import edgekit

    model, data = digits
    out = tmp_path_factory.mktemp("bundles") / "digits-int8"
    return edgekit.build(model, "android-arm64-int8", calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out, emulator="host")


def read_report(bundle: Path) -> dict:
    return json.loads((bundle / "report.json").read_text())
