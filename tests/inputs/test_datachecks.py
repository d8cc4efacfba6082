from pathlib import Path

import numpy as np

from edgekit.config.options import BuildOptions, Verify
from edgekit.inputs.data import Dataset
from edgekit.inputs.datachecks import MIN_CALIBRATION_SAMPLES, calibration_warnings, duplicates, label_coverage
from edgekit.pipeline.prepare import make_plan


def _plan(digits, calibration, tmp_path: Path):
    model, data = digits
    return make_plan(model, "android-arm64-int8", calibration, (data["x_eval"], data["y_eval"]), tmp_path / "o",
                     BuildOptions(verify=Verify(emulator="host")))


def test_clean_digits_data_gives_no_warning(digits, tmp_path: Path):
    _, data = digits
    assert _plan(digits, (data["x_calib"], data["y_calib"]), tmp_path).warnings == []


def test_differently_normalised_calibration_data_is_named_with_the_fix(digits, tmp_path: Path):
    _, data = digits
    warnings = _plan(digits, (data["x_calib"] * 255.0, data["y_calib"]), tmp_path).warnings
    assert len(warnings) == 1
    assert "calibration and eval data look normalised differently" in warnings[0]
    assert "preprocess both the same way (e.g. both scaled to 0..1)" in warnings[0]


def test_too_few_samples_states_the_minimum(digits, tmp_path: Path):
    _, data = digits
    warnings = _plan(digits, (data["x_calib"][:20], data["y_calib"][:20]), tmp_path).warnings
    assert any(w.startswith(f"only 20 calibration samples: INT8 ranges need at least {MIN_CALIBRATION_SAMPLES}")
               for w in warnings)


def test_duplicates_and_label_coverage():
    x = np.repeat(np.arange(5, dtype=np.float32)[:, None], 3, axis=0)
    data = Dataset({"x": x}, np.zeros(15, dtype=np.int64), "calib")
    assert duplicates(data) == ["10 of 15 calibration samples are duplicates: they add no range information; "
                                "deduplicate the calibration set"]
    evaluation = Dataset({"x": x[:4]}, np.array([0, 1, 2, 2]), "eval")
    [message] = label_coverage(data, evaluation)
    assert message.startswith("calibration data has no samples of 2 class(es) present in the eval data (1, 2)")
    assert len(calibration_warnings(data, evaluation, eval_is_separate=True)) == 3
