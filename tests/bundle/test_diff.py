"""`edgekit diff`: a release gate between two real bundles (exit 3 on regression, 0 otherwise, 2 on bad input)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgekit
from edgekit.bundle.diff import DiffThresholds, diff_bundles
from edgekit.cli import main
from edgekit.config.options import options_from_keywords
from tests.helpers import int8_breaking_copy
from tests.pipeline.test_faults import rehash


def run(*args: object):
    return CliRunner().invoke(main, ["diff", *(str(a) for a in args)], catch_exceptions=False)


def _build(model, data, out: Path, **options) -> edgekit.BuildResult:
    return edgekit.build(model, "android-arm64-int8", calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out,
                         options=options_from_keywords(emulator="host", **options))


# The figures of the worse bundle pass through float rounding (INT8 calibration ranges), which differs between CPUs:
# they are read from the reports and checked against bounds, and the messages must state exactly those figures.
DROP_REGRESSION = re.compile(r"accuracy drop grew by (\d+\.\d\d) points \((\d+\.\d\d) -> (\d+\.\d\d)\) "
                             r"> max increase 0\.5 points")
AGREEMENT_REGRESSION = re.compile(r"top-1 agreement fell by (\d\.\d{4}) \((\d\.\d{4}) -> (\d\.\d{4})\) "
                                  r"> max decrease 0\.01")


@pytest.fixture(scope="module")
def worse_bundle(digits, tmp_path_factory) -> edgekit.BuildResult:
    """A model that INT8 hurts by several points (7.5 on the shipped digits CNN here), built with thresholds loose
    enough that it passes on its own."""
    model, data = digits
    return _build(int8_breaking_copy(model, 200.0), data, tmp_path_factory.mktemp("diff") / "worse",
                  max_drop=20.0, min_agreement=0.8, equalize="off")


def drift_change(old: edgekit.BuildResult, new: edgekit.BuildResult) -> dict[str, tuple[float, float]]:
    """(old, new) accuracy drop and top-1 agreement, from the two bundles' own reports."""
    return {key: (old.report["drift"][key], new.report["drift"][key]) for key in ("accuracy_drop", "top1_agreement")}


def assert_names_the_change(drop_message: str, agreement_message: str, change: dict) -> None:
    """Each regression sentence states the figures of the reports, formatted as documented."""
    (drop_old, drop_new), (agreement_old, agreement_new) = change["accuracy_drop"], change["top1_agreement"]
    drop = DROP_REGRESSION.fullmatch(drop_message)
    assert drop, drop_message
    assert drop.groups() == (f"{drop_new - drop_old:.2f}", f"{drop_old:.2f}", f"{drop_new:.2f}")
    agreement = AGREEMENT_REGRESSION.fullmatch(agreement_message)
    assert agreement, agreement_message
    assert agreement.groups() == (f"{agreement_old - agreement_new:.4f}", f"{agreement_old:.4f}",
                                  f"{agreement_new:.4f}")


@pytest.fixture(scope="module")
def rebuild(digits, tmp_path_factory) -> edgekit.BuildResult:
    """The shared int8_bundle built again: same model, data and options."""
    model, data = digits
    return _build(model, data, tmp_path_factory.mktemp("diff") / "rebuild")


@pytest.mark.slow
def test_a_grown_accuracy_drop_exits_3(int8_bundle, worse_bundle):
    change = drift_change(int8_bundle, worse_bundle)
    (drop_old, drop_new), (agreement_old, agreement_new) = change["accuracy_drop"], change["top1_agreement"]
    assert worse_bundle.passed and drop_new - drop_old > 5.0 and agreement_old - agreement_new > 0.01
    result = run(int8_bundle.out, worse_bundle.out)
    assert result.exit_code == 3, result.output
    regressions = [line.removeprefix("regression    ") for line in result.output.splitlines()
                   if line.startswith("regression    ")]
    assert len(regressions) == 2, result.output
    assert_names_the_change(*regressions, change)
    assert "model         changed" in result.output and "FAILED: NEW regresses" in result.output


def test_json_names_every_regression_and_looser_thresholds_pass(int8_bundle, worse_bundle):
    result = run(int8_bundle.out, worse_bundle.out, "--json")
    diff = json.loads(result.stdout)
    assert result.exit_code == 3 and diff["passed"] is False
    change = drift_change(int8_bundle, worse_bundle)
    for key, (old, new) in change.items():
        assert (diff["drift"][key]["old"], diff["drift"][key]["new"]) == (old, new), key
        assert diff["drift"][key]["delta"] == pytest.approx(new - old, abs=1e-12), key
    assert diff["drift"]["accuracy_drop"]["delta"] > 5.0 and diff["drift"]["top1_agreement"]["delta"] < -0.01
    assert diff["lineage"]["model_sha256"]["changed"] and not diff["lineage"]["eval_sha256"]["changed"]
    assert len(diff["regressions"]) == 2, diff["regressions"]
    assert_names_the_change(*diff["regressions"], change)
    # thresholds just above the measured changes let the same pair pass
    drop_limit = round(diff["drift"]["accuracy_drop"]["delta"] + 0.01, 2)
    agreement_limit = round(-diff["drift"]["top1_agreement"]["delta"] + 0.001, 4)
    loose = run(int8_bundle.out, worse_bundle.out, "--max-drop-increase", drop_limit,
                "--max-agreement-decrease", agreement_limit)
    assert loose.exit_code == 0 and "PASSED: no regression" in loose.output, loose.output


@pytest.mark.slow
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
    edited = run(int8_bundle.out, bigger)  # an edited report is refused: its sha256 is in the manifest
    assert edited.exit_code == 3 and "report.json differs from the sha256 in manifest.json" in edited.output
    manifest = json.loads((bigger / "manifest.json").read_text())  # as if the build itself had written it
    manifest["files"]["report.json"] = hashlib.sha256((bigger / "report.json").read_bytes()).hexdigest()
    (bigger / "manifest.json").write_text(json.dumps(manifest))
    assert run(int8_bundle.out, bigger).exit_code == 0
    gated = run(int8_bundle.out, bigger, "--max-size-increase", 0.1)
    assert gated.exit_code == 3 and "device model grew by 25.0%" in gated.output


def test_a_folder_that_is_not_a_bundle_exits_2(int8_bundle, tmp_path: Path):
    result = run(int8_bundle.out, tmp_path)
    assert result.exit_code == 2
    assert f"error: {tmp_path}: no manifest.json: the folder is not an edgekit bundle" in result.output
    assert "hint: rebuild the bundle with `edgekit build`, or give the folder `edgekit build` wrote" in result.output
    (tmp_path / "manifest.json").write_text("{}")
    assert "manifest.json: missing key files" in run(tmp_path, int8_bundle.out).output
    shutil.copytree(int8_bundle.out, tmp_path / "other")
    (tmp_path / "other" / "report.json").write_text('{"schema": "other"}')
    refused = run(tmp_path / "other", int8_bundle.out)  # a file that differs from its manifest: exit 3, unparsed
    assert refused.exit_code == 3 and "report.json differs from the sha256 in manifest.json" in refused.output
    rehash(tmp_path / "other", "report.json")  # a manifest forged to vouch for it: parsed, and refused for what it is
    refused = run(tmp_path / "other", int8_bundle.out)
    assert refused.exit_code == 2 and "report.json is not an edgekit.report/1 report" in refused.output


def test_negative_thresholds_are_refused():
    with pytest.raises(edgekit.ConfigError, match="max-drop-increase must be zero or more"):
        DiffThresholds(max_drop_increase=-1.0)


def test_diff_compares_detections_and_flags_a_recall_fall():
    from edgekit.bundle.diff import DiffThresholds, _drift, regressions

    def drift(recall, precision, found):
        detection = {"recall": recall, "precision": precision, "float_detections": 10, "device_detections": found,
                     "map50": {"float": 90.0, "device": 80.0 + found, "drop": 10.0 - found}}
        return {"samples": 8, "reference_accuracy": None, "device_accuracy": None, "accuracy_drop": None,
                "top1_agreement": None, "outputs": [{"name": "output0", "sqnr_db": 30.0, "detection": detection,
                                                     "parts": [{"name": "scores", "sqnr_db": 12.0}]}]}

    block = _drift(drift(0.99, 1.0, 0), drift(0.9, 0.95, 9))
    row = block["outputs"][0]
    assert row["precision"]["old"] is None  # no device detections: nothing to compare
    assert (row["recall"]["old"], row["recall"]["new"]) == (0.99, 0.9) and row["worst_part_sqnr_db"]["new"] == 12.0
    result = {"drift": block, "size": {"device_bytes": {"old": 1, "new": 1}}, "verdict": {"old": True, "new": True}}
    [found] = regressions(result, DiffThresholds())
    assert found.startswith("detection recall vs float of output0 fell by 0.0900")
