"""Compression through edgekit.build: the acceptance numbers measured on the real converted model."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

import edgekit
from edgekit.cli import main
from edgekit.report import report_schema
from examples.digits import load_digits_split
from tests.helpers import shipped_wide_digits_cnn


@pytest.fixture(scope="module")
def wide():
    """The shipped digits CNN with 438k parameters (the issue asks for >= 200k), and its data."""
    model = shipped_wide_digits_cnn()
    assert sum(p.numel() for p in model.parameters()) >= 200_000
    return model, load_digits_split(seed=0)


def _build(wide, out: Path, **options):
    model, data = wide
    return edgekit.build(model, "android-arm64-int8", calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out, emulator="host", **options)


@pytest.mark.slow
def test_prune_cluster_int8_is_an_eighth_of_the_float_baseline_and_keeps_accuracy(wide, tmp_path: Path):
    result = _build(wide, tmp_path / "pc", prune=edgekit.Prune(0.5), cluster=edgekit.Cluster(16))
    size, drift = result.report["size"], result.report["drift"]
    assert size["device_gzip_bytes"] * 8 <= size["baseline_float_gzip_bytes"]
    assert drift["accuracy_drop"] <= 1.0 and result.passed
    compressed = [r for r in result.report["compression"]["per_layer"] if r["requested_sparsity"]]
    assert {r["module"] for r in compressed} == {"features.3", "classifier.1"}
    for row in compressed:
        assert abs(row["device_sparsity"] - 0.5) <= 0.01  # zeros survive INT8 conversion
        assert row["device_max_distinct"] <= 16  # k values per output channel on the device
    jsonschema.validate(result.report, report_schema())


@pytest.mark.slow
def test_structured_pruning_removes_channels_in_the_device_model(wide, tmp_path: Path):
    result = _build(wide, tmp_path / "s", prune=edgekit.Prune(0.5, mode="structured"), recover=100)
    block = result.report["compression"]
    assert block["params_after"] <= 0.6 * block["params_before"]
    plain = _build(wide, tmp_path / "plain").report["size"]["device_bytes"]
    assert result.report["size"]["device_bytes"] <= 0.5 * plain
    assert result.report["drift"]["accuracy_drop"] <= 1.0
    assert result.report["conversion"]["outputs"][0]["sqnr_db"] > 80  # measured against the compressed model


def test_compression_of_a_program_file_is_refused_with_a_hint(digits_files, emulator_not_set_up, tmp_path: Path):
    result = CliRunner().invoke(main, ["build", str(digits_files["pt2"]), "--target", "android-arm64-int8",
                                       "--calibration", str(digits_files["calib"]), "--prune", "0.5",
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "compression needs the model as an nn.Module" in result.stderr and "package.module:factory" in result.stderr
    assert not (tmp_path / "o").exists()


def test_recover_without_compression_is_refused():
    with pytest.raises(edgekit.UnsupportedError, match="neither --prune nor --clusters"):
        edgekit.build("examples.digits:DigitsCNN", "android-arm64-int8", calibration="x.npz", recover=10)
