import numpy as np
import pytest

from edgekit.errors import ConversionError
from edgekit.measure.mapping import channels_last, layout_candidates, match_outputs


def test_channels_last_permutations():
    assert channels_last(4) == (0, 2, 3, 1) and channels_last(3) == (0, 2, 1) and channels_last(2) is None
    assert layout_candidates((1, 3, 8, 6), (1, 8, 6, 3)) == [(0, 2, 3, 1)]
    assert layout_candidates((1, 10), (1, 10)) == [None]


def test_outputs_are_matched_by_values_not_position():
    rng = np.random.default_rng(0)
    scores, boxes = rng.random((6, 10)), rng.random((6, 10)) * 100
    device = {0: boxes + 0.01, 1: scores + 0.001}  # converter swapped the order and renamed them
    matched = match_outputs({"scores": scores, "boxes": boxes}, device)
    assert matched["scores"][:2] == (1, None) and matched["boxes"][:2] == (0, None)


def test_channels_last_device_output_is_transposed_back():
    ref = np.random.default_rng(1).random((2, 3, 4, 5))
    matched = match_outputs({"features": ref}, {0: ref.transpose(0, 2, 3, 1)})
    assert matched["features"][1] == (0, 2, 3, 1) and matched["features"][2] == pytest.approx(0.0)


def test_no_output_of_the_right_shape_is_an_error():
    with pytest.raises(ConversionError, match="cannot match device output"):
        match_outputs({"y": np.ones((2, 10))}, {0: np.ones((2, 9))})
