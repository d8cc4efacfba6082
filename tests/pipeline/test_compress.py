"""Compression through edgekit.build: the acceptance numbers measured on the real converted model."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

import edgekit
from edgekit.bundle.report import report_schema
from edgekit.cli import main
from edgekit.config.options import options_from_keywords
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
                         eval_data=(data["x_eval"], data["y_eval"]), out=out,
                         options=options_from_keywords(emulator="host", **options))


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


@pytest.fixture(scope="module")
def saved_forms(digits_files, tmp_path_factory) -> dict[str, Path]:
    """The digits CNN as .pt2, TorchScript and ONNX (the exporter folds its batch norms into the convolutions)."""
    import torch

    from edgekit.inputs.model import load_model

    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    module = load_model(digits_files["ts"]).module
    example = (torch.zeros(1, 1, 8, 8),)
    torch.onnx.export(module, example, str(path), dynamo=False, input_names=["x"], output_names=["logits"])
    return {"pt2": digits_files["pt2"], "ts": digits_files["ts"], "onnx": path}


def _cli_build(model: Path, files: dict[str, Path], out: Path, *options: str):
    return CliRunner().invoke(main, ["build", str(model), "--target", "android-arm64-int8", "--calibration",
                                     str(files["calib"]), "--eval", str(files["eval"]), "--emulator", "host",
                                     "--out", str(out), *options])


@pytest.mark.slow
@pytest.mark.parametrize("form", ["pt2", "ts", "onnx"])
def test_saved_models_are_pruned_and_clustered_and_the_device_keeps_it(form, saved_forms, digits_files,
                                                                        tmp_path: Path):
    result = _cli_build(saved_forms[form], digits_files, tmp_path / "o", "--prune", "0.5", "--clusters", "16")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    compressed = {r["module"]: r for r in report["compression"]["per_layer"] if r["requested_sparsity"]}
    assert set(compressed) == {"features.3", "classifier.1"}  # the torch names, also from the ONNX graph
    for row in compressed.values():
        assert abs(row["device_sparsity"] - 0.5) <= 0.01 and row["device_max_distinct"] <= 16
    assert report["drift"]["accuracy_drop"] <= 2.0  # against the model as given, before compression
    # the converter's error against the compressed model (against the original it would be the pruning's error)
    assert report["conversion"]["outputs"][0]["sqnr_db"] > 80
    assert report["compression"]["format"] == {"pt2": "exported_program", "ts": "torchscript", "onnx": "onnx"}[form]
    jsonschema.validate(report, report_schema())


@pytest.mark.slow
def test_structured_pruning_of_torchscript_removes_channels(saved_forms, digits_files, tmp_path: Path):
    result = _cli_build(saved_forms["ts"], digits_files, tmp_path / "s", "--prune", "0.5", "--prune-mode",
                        "structured", "--recover", "50")
    assert result.exit_code == 0, result.output
    block = json.loads((tmp_path / "s" / "report.json").read_text())["compression"]
    assert block["params_after"] <= 0.6 * block["params_before"]
    rows = {r["module"]: r for r in block["per_layer"]}
    assert rows["features.3"]["out_channels"][1] < rows["features.3"]["out_channels"][0]


@pytest.mark.parametrize(("options", "message"), [
    (("--prune", "0.5", "--prune-mode", "structured"), "structured pruning removes channels"),
    (("--clusters", "16", "--recover", "10"), "--recover fine-tunes in PyTorch; an ONNX model has no training graph"),
])
def test_onnx_refuses_what_needs_the_graph_rewritten_or_trained(options, message, saved_forms, digits_files,
                                                                 emulator_not_set_up, tmp_path: Path):
    result = _cli_build(saved_forms["onnx"], digits_files, tmp_path / "o", *options)
    assert result.exit_code == 2 and message in result.stderr and "hint" in result.stderr
    assert not (tmp_path / "o").exists()


def test_recover_without_compression_is_refused():
    with pytest.raises(edgekit.UnsupportedError, match="neither --prune nor --clusters"):
        edgekit.build("examples.digits:DigitsCNN", "android-arm64-int8", calibration="x.npz",
                      options=edgekit.BuildOptions(compression=edgekit.Compression(recover=10)))
