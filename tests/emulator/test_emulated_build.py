"""Issue 6 end to end: the Android model's drift measured in the ARM64 emulator, and check.py run there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.emulator import qemu as emulator
from edgekit.emulator.drift import NOT_SET_UP_NOTE, choose
from edgekit.errors import ConfigError, ToolError

pytestmark = pytest.mark.emulator


@pytest.fixture(scope="module")
def arm64_bundle(emulator_root, digits_files, tmp_path_factory):
    return edgekit.build(digits_files["pt2"], "android-arm64-int8", calibration=digits_files["calib"],
                         eval_data=digits_files["eval"], out=tmp_path_factory.mktemp("emu") / "b",
                         options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="arm64", emulator_samples=100)))


def test_int8_in_the_emulator_is_bit_exact_with_the_host(arm64_bundle):
    block = arm64_bundle.report["emulator"]
    assert block["where"] == "qemu-aarch64 cortex-a76" and block["samples"] == 100
    assert block["bit_exact_with_host"] is True and block["max_abs_diff_vs_host"] == {"output": 0.0}
    host = arm64_bundle.report["drift"]
    # bit-exact with the host, so its 100 samples hold no more top-1 disagreements than the host's 360 do
    assert round((1 - block["top1_agreement"]) * 100) <= round((1 - host["top1_agreement"]) * host["samples"])
    assert block["top1_agreement"] >= 0.99 and block["passed"] is True
    assert host["top1_agreement"] >= 0.99 and arm64_bundle.passed


def test_emulator_timing_is_recorded(arm64_bundle):
    assert arm64_bundle.report["timings_s"]["emulator"] > 0
    block = arm64_bundle.report["emulator"]
    assert block["budget_s"] == 60.0 and 0 < block["seconds"] <= arm64_bundle.report["timings_s"]["emulator"]


def test_the_emulator_run_fits_its_time_budget(emulator_root, digits_files, tmp_path: Path):
    """--emulator-seconds: beyond the first 8 samples, only as many as the budget fits at the measured per-sample
    time; --emulator-samples stays the upper bound. A budget the first 8 already spend runs those 8."""
    result = edgekit.build(digits_files["pt2"], "onnxruntime-arm64-int8", calibration=digits_files["calib"],
                           eval_data=digits_files["eval"], out=tmp_path / "b",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="arm64", emulator_samples=100,
                                                                             emulator_seconds=0.01)))
    block = result.report["emulator"]
    assert block["samples"] == 8 and block["budget_s"] == 0.01 and block["passed"] is True
    assert block["bit_exact_with_host"] is True


def test_check_py_runs_unchanged_on_arm64(arm64_bundle):
    done = emulator.run_python(arm64_bundle.out / "check.py", ["--json"], cwd=arm64_bundle.out)
    assert done.returncode == 0, done.stderr[-800:]
    result = json.loads(done.stdout)
    assert result["passed"] and result["runtime"] == "ai_edge_litert.interpreter"
    assert result["outputs"][0]["max_abs_err_vs_golden"] == 0.0


def test_edgekit_check_in_the_emulator(arm64_bundle):
    from edgekit.bundle.check import check_bundle_dir

    result = check_bundle_dir(arm64_bundle.out, emulator="arm64")
    assert result["passed"] and result["where"] == "qemu-aarch64 cortex-a76"


def test_float32_in_the_emulator_agrees_within_rounding(emulator_root, digits_files, tmp_path: Path):
    result = edgekit.build(digits_files["pt2"], "android-arm64-fp32", calibration=digits_files["calib"],
                           eval_data=digits_files["eval"], out=tmp_path / "f",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="arm64", emulator_samples=32)))
    block = result.report["emulator"]
    # exact on any machine: the shipped model's top-2 logit margin on these samples (> 1) dwarfs float32 rounding
    assert block["top1_agreement"] == 1.0 and block["passed"]
    assert block["max_abs_diff_vs_host"]["output"] < 1e-4


def _target_and_route(name: str):
    from edgekit.config.target import load_target
    from edgekit.routes import get_route

    target = load_target(name)
    return target, get_route(target.route)


def test_default_is_arm64_once_set_up(emulator_root):
    assert choose(None, *_target_and_route("android-arm64-int8")) == ("arm64", None)
    assert choose(None, *_target_and_route("jetson-orin-int8")) == ("host", None)
    with pytest.raises(ConfigError, match="does not apply to jetson-orin-int8: route tensorrt measures drift on"):
        choose("arm64", *_target_and_route("jetson-orin-int8"))


def test_default_falls_back_to_host_with_a_note_when_not_set_up(emulator_not_set_up):
    assert choose(None, *_target_and_route("android-arm64-int8")) == ("host", NOT_SET_UP_NOTE)
    with pytest.raises(ToolError, match="not set up"):
        choose("arm64", *_target_and_route("android-arm64-int8"))


def test_golden_inputs_are_usable_from_an_app(arm64_bundle):
    with np.load(arm64_bundle.out / "golden" / "inputs.npz") as inputs:
        assert inputs.files == ["x"]  # the .pt2's own input name
        assert inputs["x"].dtype == np.float32 and inputs["x"].shape[1:] == (1, 8, 8)


def test_an_emulator_failure_is_recorded_and_the_host_check_completes(emulator_root, digits_files, tmp_path: Path):
    source = (Path(__file__).parents[2] / "targets" / "android-arm64-int8.toml").read_text()
    target = tmp_path / "bad-cpu.toml"
    target.write_text(source.replace('name = "android-arm64-int8"', 'name = "bad-cpu"')
                      .replace('cpu = "cortex-a76"', 'cpu = "cortex-z99"'))
    result = edgekit.build(digits_files["pt2"], target, calibration=digits_files["calib"],
                           eval_data=digits_files["eval"], out=tmp_path / "b",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="arm64", emulator_samples=4)))
    block = result.report["emulator"]
    assert block["passed"] is False and block["samples"] == 0 and "emulator failed" in block["error"]
    assert result.report["drift"]["passed"] is True and result.report["drift"]["samples"] == 360
    assert not result.passed and any("emulator run failed" in w for w in result.report["warnings"])
    assert (tmp_path / "b" / "report.json").is_file()
