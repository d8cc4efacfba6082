"""Input-data drift: data_stats.json from the calibration data, PSI per channel, and the bundle's monitor.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.standalone import monitor


@pytest.fixture(scope="module")
def stats(digits) -> dict:
    return monitor.data_stats({"input": digits[1]["x_calib"]})


def test_stats_describe_each_channel_with_quantile_bins(stats, digits):
    described = stats["inputs"]["input"]
    assert stats["schema"] == "edgekit.data_stats/1" and stats["samples"] == 300
    assert described["shape"] == [1, 8, 8] and described["channel_axis"] == 1
    [channel] = described["channels"]
    assert len(channel["quantiles"]) == 101 and channel["quantiles"][0] == 0.0 and channel["quantiles"][-1] == 1.0
    assert channel["mean"] == pytest.approx(float(digits[1]["x_calib"].mean()))
    assert len(channel["expected"]) == len(channel["edges"]) + 1 and sum(channel["expected"]) == pytest.approx(1.0)


def test_inputs_from_the_calibration_distribution_are_no_drift(stats, digits):
    result = monitor.score(digits[1]["x_eval"], stats)
    assert not result["drift"] and result["score"] < 0.05
    assert result["samples"] == 360 and result["threshold"] == 0.2


def test_brighter_inputs_are_drift(stats, digits):
    result = monitor.score({"input": digits[1]["x_eval"] * 1.5}, stats)
    [channel] = result["inputs"]["input"]["channels"]
    assert result["drift"] and result["score"] > 0.3 and channel["drift"]
    assert channel["mean"] == pytest.approx(1.5 * channel["reference_mean"], rel=0.1)


def test_several_inputs_and_feature_vectors_are_scored_per_channel():
    rng = np.random.default_rng(0)
    calib = {"image": rng.normal(size=(500, 3, 4, 4)), "features": rng.normal(size=(500, 5))}
    stats = monitor.data_stats(calib)
    live = {"image": rng.normal(size=(400, 3, 4, 4)), "features": rng.normal(size=(400, 5))}
    live["features"][:, 2] += 1.0  # one feature moves by one standard deviation
    result = monitor.score(live, stats)
    assert len(result["inputs"]["image"]["channels"]) == 3 and not result["inputs"]["image"]["channels"][0]["drift"]
    assert [c["drift"] for c in result["inputs"]["features"]["channels"]] == [False, False, True, False, False]


def test_live_data_that_does_not_fit_is_an_error(stats):
    with pytest.raises(monitor.MonitorError, match=r"live samples have shape \[8, 8, 1\].*had \[1, 8, 8\]"):
        monitor.score(np.zeros((4, 8, 8, 1), np.float32), stats)
    with pytest.raises(monitor.MonitorError, match="no live array for input"):
        monitor.score({"other": np.zeros((4, 1, 8, 8)), "more": np.zeros((4, 1, 8, 8))}, stats)


def _run_monitor(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)


def test_bundle_monitor_py_exits_0_on_calibration_like_data_and_3_on_drift(int8_bundle, digits, tmp_path: Path):
    out = int8_bundle.out
    assert (out / "monitor.py").read_bytes() == Path(monitor.__file__).read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"monitor.py", "data_stats.json"} <= set(manifest["files"])
    np.savez(tmp_path / "live.npz", input=digits[1]["x_eval"])
    np.savez(tmp_path / "bright.npz", x=digits[1]["x_eval"] * 1.5)
    calm, bright = _run_monitor(out / "monitor.py", str(tmp_path / "live.npz")), \
        _run_monitor(out / "monitor.py", str(tmp_path / "bright.npz"), "--json")
    assert calm.returncode == 0 and "no drift" in calm.stdout, calm.stdout + calm.stderr
    assert bright.returncode == 3 and json.loads(bright.stdout)["drift"] is True


def test_monitor_cli_errors_exit_2(int8_bundle, tmp_path: Path):
    np.save(tmp_path / "nhwc.npy", np.zeros((4, 8, 8, 1), np.float32))
    wrong = _run_monitor(int8_bundle.out / "monitor.py", str(tmp_path / "nhwc.npy"))
    missing = _run_monitor(int8_bundle.out / "monitor.py", str(tmp_path / "missing.npz"))
    assert wrong.returncode == 2 and "live samples have shape [8, 8, 1]" in wrong.stderr
    assert missing.returncode == 2 and "cannot read" in missing.stderr
