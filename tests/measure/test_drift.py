import numpy as np
import pytest

from edgekit.config.options import Gate
from edgekit.measure.drift import (
    SQNR_CAP_DB,
    class_output,
    drift_block,
    failure_reasons,
    output_metrics,
    sqnr_db,
)


def test_sqnr_of_known_noise():
    ref = np.ones(1000)
    assert sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)
    assert sqnr_db(ref, ref) == SQNR_CAP_DB


def test_output_metrics_numbers():
    ref = {"out": np.array([[1.0, -2.0], [3.0, 0.0]])}
    dev = {"out": np.array([[1.5, -2.0], [3.0, 0.0]])}
    [row] = output_metrics(ref, dev)
    assert row["max_abs_err"] == 0.5 and row["mean_abs_err"] == 0.125
    assert row["sqnr_db"] == pytest.approx(10 * np.log10(14 / 0.25), abs=1e-3)
    assert 0.99 < row["cosine"] < 1.0


def test_accuracy_drop_is_in_points_and_agreement_a_fraction():
    labels = np.array([0, 1, 1, 0])
    ref = {"logits": np.array([[2, 1], [1, 2], [1, 2], [2, 1]], float)}
    dev = {"logits": np.array([[2, 1], [1, 2], [2, 1], [2, 1]], float)}
    block = drift_block(ref, dev, labels, "logits", Gate(max_drop=1.0, min_agreement=0.99, min_sqnr=20.0))
    assert block["reference_accuracy"] == 1.0 and block["device_accuracy"] == 0.75
    assert block["accuracy_drop"] == 25.0 and block["top1_agreement"] == 0.75
    assert block["passed"] is False
    assert failure_reasons(block) == ["accuracy drop 25.00 points > max 1.0", "top-1 agreement 0.7500 < min 0.99"]


def test_zero_samples_never_pass():
    block = drift_block({}, {}, None, None, Gate(min_sqnr=20.0))
    assert block["samples"] == 0 and block["passed"] is False
    assert failure_reasons(block) == ["no samples were compared"]


def test_nan_on_the_device_fails():
    ref = {"y": np.ones((3, 4))}
    dev = {"y": np.array([[1, 1, 1, np.nan]] * 3)}
    block = drift_block(ref, dev, None, None, Gate(min_sqnr=20.0))
    assert block["outputs"][0]["sqnr_db"] is None and block["passed"] is False


def test_regression_outputs_are_judged_by_sqnr():
    ref = {"y": np.linspace(1, 2, 40).reshape(10, 4)}
    noisy = {"y": ref["y"] * 1.2}
    assert drift_block(ref, noisy, None, None, Gate(min_sqnr=20.0))["passed"] is False
    assert drift_block(ref, noisy, None, None, Gate(min_sqnr=10.0))["passed"] is True


def test_class_output_is_the_first_batch_by_classes_output():
    assert class_output({"boxes": (1, 4, 100), "scores": (1, 10)}) == "scores"
    assert class_output({"value": (1, 1)}) is None
