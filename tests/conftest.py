"""Shared fixtures: the shipped digits CNN, its data as files, one INT8 bundle built once, and the emulator states.

Hermetic on purpose: the model is never trained on the spot (float rounding in training differs between CPUs, so
every figure downstream of a model trained here would be machine-dependent); its weights ship with the repository
(tests/helpers.py). The data split is exact on every machine (scikit-learn's integer images / 16, a seeded
permutation). Figures that still pass through float rounding (INT8 calibration ranges, conversion) are asserted as
bounds and relations, never as exact numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import edgekit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # examples/ is importable as a package from the tests

from examples.digits import load_digits_split  # noqa: E402
from tests.helpers import shipped_digits_cnn  # noqa: E402

EXAMPLE = ROOT / "examples" / "01_android_int8"


@pytest.fixture(scope="session")
def digits():
    """(model, data): the shipped DigitsCNN (trained for 15 epochs on scikit-learn's digits, ~99 % eval accuracy)
    and the split it was trained on. Its smallest top-2 logit margin on the eval set is 0.11, far above the float
    rounding that differs between CPUs: float32/float16 targets keep every top-1 (agreement 1.0) on any machine."""
    return shipped_digits_cnn(), load_digits_split(seed=0)


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

    model, data = digits
    out = tmp_path_factory.mktemp("bundles") / "digits-int8"
    return edgekit.build(model, "android-arm64-int8", calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out,
                         options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")))


def read_report(bundle: Path) -> dict:
    return json.loads((bundle / "report.json").read_text())


@pytest.fixture(scope="session")
def emulator_root() -> Path:
    """The ARM64 emulator, set up at default_root() (once: later sessions reuse the cache). Tests that need it set
    up depend on this fixture instead of on whatever state the shared cache happens to be in."""
    from edgekit.emulator import qemu as emulator

    root = emulator.default_root()
    emulator.setup(root)
    return root


@pytest.fixture()
def emulator_not_set_up(monkeypatch, tmp_path_factory) -> Path:
    """The ARM64 emulator cache is shared with other processes (`edgekit emulator setup` may run at any time): a
    test of what happens without it points EDGEKIT_CACHE at an empty folder of its own."""
    from edgekit.emulator import qemu as emulator

    cache = tmp_path_factory.mktemp("no-emulator-cache")
    monkeypatch.setenv("EDGEKIT_CACHE", str(cache))
    assert not emulator.is_ready()
    return cache
