"""`edgekit diff`: a release gate between two real bundles (exit 3 on regression, 0 otherwise, 2 on bad input)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgekit
from edgekit.cli import main
from edgekit.diff import DiffThresholds, diff_bundles
from tests.helpers import int8_breaking_copy


def run(*args: object):
    return CliRunner().invoke(main, ["diff", *(str(a) for a in args)], catch_exceptions=False)


def _build(model, data, out: Path, **options) -> edgekit.BuildResult:
    return edgekit.build(model, "android-arm64-int8", calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out, emulator="host", **options)


@pytest.fixture(scope="module")
def worse_bundle(digits, tmp_path_factory) -> edgekit.BuildResult:
    """A model that INT8 hurts by ~7.5 points, built with thresholds loose enough that it passes on its own."""
    model, data = digits
    return _build(int8_breaking_copy(model, 200.0), data, tmp_path_factory.mktemp("diff") / "worse",
                  max_drop=10.0, min_agreement=0.9)


@pytest.fixture(scope="module")
def rebuild(digits, tmp_path_factory) -> edgekit.BuildResult:
    """The shared int8_bundle built again: same model, data and options."""
    model, data = digits
    return _build(model, data, tmp_path_factory.mktemp("diff") / "rebuild")


def test_a_grown_accuracy_drop_exits_3(int8_bundle, worse_bundle):
    assert worse_bundle.passed and worse_bundle.report["drift"]["accuracy_drop"] > 5.0
    result = run(int8_bundle.out, worse_bundle.out)
    assert result.exit_code == 3, result.output
    assert "regression    accuracy drop grew by 7.50 points (0.00 -> 7.50) > max increase 0.5 points" in result.output
    assert "model         changed" in result.output and "FAILED: NEW regresses" in result.output


def test_json_names_every_regression_and_looser_thresholds_pass(int8_bundle, worse_bundle):
    result = run(int8_bundle.out, worse_bundle.out, "--json")
    diff = json.loads(result.stdout)
    assert result.exit_code == 3 and diff["passed"] is False
    assert diff["drift"]["accuracy_drop"]["delta"] == pytest.approx(7.5, abs=0.01)
    assert diff["lineage"]["model_sha256"]["changed"] and not diff["lineage"]["eval_sha256"]["changed"]
    assert [r.split(" (")[0] for r in diff["regressions"]] == ["accuracy drop grew by 7.50 points",
                                                              "top-1 agreement fell by 0.0806"]
    loose = run(int8_bundle.out, worse_bundle.out, "--max-drop-increase", 8, "--max-agreement-decrease", 0.1)
    assert loose.exit_code == 0 and "PASSED: no regression" in loose.output


def test_an_identical_rebuild_exits_0(int8_bundle, rebuild):
    result = run(int8_bundle.out, rebuild.out)
    assert result.exit_code == 0, result.output
    assert "note          same model, calibration data and config" in result.output
    diff = diff_bundles(int8_bundle.out, rebuild.out)
    assert diff["drift"]["accuracy_drop"]["delta"] == 0 and diff["size"]["device_bytes"]["delta"] == 0
    assert diff["config"] == [] and diff["regressions"] == []


def test_a_bigger_model_is_gated_only_when_asked(int8_bundle, tmp_path: Path):
    bigger = tmp_path / "bigger"
    shutil.copytree(int8_bundle.out, bigger)
    report = json.loads((bigger / "report.json").read_text())
    report["size"]["device_bytes"] = int(report["size"]["device_bytes"] * 1.25)
    (bigger / "report.json").write_text(json.dumps(report))
    assert run(int8_bundle.out, bigger).exit_code == 0
    gated = run(int8_bundle.out, bigger, "--max-size-increase", 0.1)
    assert gated.exit_code == 3 and "device model grew by 25.0%" in gated.output


def test_a_folder_that_is_not_a_bundle_exits_2(int8_bundle, tmp_path: Path):
    result = run(int8_bundle.out, tmp_path)
    assert result.exit_code == 2
    assert f"error: {tmp_path} is not an edgekit bundle" in result.output
    assert "hint: give two folders that `edgekit build` wrote" in result.output
    (tmp_path / "report.json").write_text('{"schema": "other"}')
    (tmp_path / "manifest.json").write_text("{}")
    assert "is not an edgekit.report/1 report" in run(tmp_path, int8_bundle.out).output


def test_negative_thresholds_are_refused():
    with pytest.raises(edgekit.ConfigError, match="max-drop-increase must be zero or more"):
        DiffThresholds(max_drop_increase=-1.0)
