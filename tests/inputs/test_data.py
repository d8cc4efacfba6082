from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import DataError
from edgekit.inputs.data import Dataset, load_data, split_holdout, validate_against
from edgekit.inputs.images import Recipe
from edgekit.inputs.model import TensorSpec

SPEC = (TensorSpec("input", (1, 1, 8, 8)),)


def test_npz_with_x_and_labels(tmp_path: Path):
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    data = validate_against(load_data(tmp_path / "d.npz"), SPEC, "data")
    assert data.size == 5 and list(data.inputs) == ["input"]
    np.testing.assert_array_equal(data.inputs["input"], x)
    np.testing.assert_array_equal(data.labels, np.arange(5))


def test_npz_with_one_key_per_input_name(tmp_path: Path):
    specs = (TensorSpec("a", (1, 3)), TensorSpec("b", (1, 2)))
    np.savez(tmp_path / "d.npz", a=np.ones((4, 3)), b=np.zeros((4, 2)))
    data = validate_against(load_data(tmp_path / "d.npz"), specs, "data")
    assert {k: v.shape for k, v in data.inputs.items()} == {"a": (4, 3), "b": (4, 2)}
    assert data.inputs["a"].dtype == np.float32


def test_npz_missing_an_input_key_names_it(tmp_path: Path):
    specs = (TensorSpec("a", (1, 3)), TensorSpec("b", (1, 2)))
    np.savez(tmp_path / "d.npz", a=np.ones((4, 3)))
    with pytest.raises(DataError, match="no array for model input\\(s\\) b"):
        validate_against(load_data(tmp_path / "d.npz"), specs, "data")


def test_npy_and_callable_sources(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.ones((3, 1, 8, 8), np.float32))
    assert load_data(tmp_path / "x.npy").size == 3
    assert load_data(lambda: (np.ones((1, 8, 8)) for _ in range(4))).size == 4
    assert load_data("tests.helpers:digits_samples").size == 10


def test_nan_data_is_refused_with_a_count():
    x = np.ones((4, 1, 8, 8), np.float32)
    x[1, 0, 0, 0], x[2, 0, 1, 1] = np.nan, np.inf
    with pytest.raises(DataError) as info:
        load_data(x, what="calibration data")
    assert info.value.message == "calibration data <calibration data array>: array 'x' holds 2 NaN/inf values"
    assert info.value.exit_code == 2


def test_empty_data_is_refused():
    with pytest.raises(DataError, match="is empty"):
        load_data(np.zeros((0, 1, 8, 8), np.float32))


def test_channels_last_data_gets_a_transpose_hint():
    data = load_data(np.ones((4, 8, 8, 1), np.float32), what="calibration data")
    with pytest.raises(DataError) as info:
        validate_against(data, SPEC, "calibration data")
    assert "samples have shape (8, 8, 1), the model expects (1, 8, 8)" in info.value.message
    assert "x.transpose(0, 3, 1, 2)" in info.value.hint


def test_wrong_size_gets_the_expected_shape():
    with pytest.raises(DataError) as info:
        validate_against(load_data(np.ones((4, 1, 28, 28), np.float32)), SPEC, "eval data")
    assert info.value.hint == "give data in the model's own layout and size: (N, 1, 8, 8)"


def test_labels_must_be_integers_one_per_sample():
    with pytest.raises(DataError, match="labels `y` must be 4 integers"):
        load_data((np.ones((4, 1, 8, 8)), np.ones(4) * 0.5))


def test_missing_path_says_what_is_accepted():
    with pytest.raises(DataError) as info:
        load_data("nowhere/calib.npz", what="calibration data")
    assert info.value.message == "calibration data nowhere/calib.npz does not exist"


def test_holdout_split_is_disjoint_and_deterministic():
    data = Dataset({"x": np.arange(50, dtype=np.float32)[:, None]}, np.arange(50), "src")
    calib, held = split_holdout(data, 0.2, seed=3)
    again, _ = split_holdout(data, 0.2, seed=3)
    assert held.size == 10 and calib.size == 40
    assert not set(held.labels) & set(calib.labels)
    np.testing.assert_array_equal(calib.labels, again.labels)


def test_image_folder_with_recipe_and_class_subfolders(tmp_path: Path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(np.full((16, 12, 3), 255 * (label == "dog"), np.uint8)).save(tmp_path / label / f"{i}.png")
    recipe = Recipe(size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    data = load_data(tmp_path, recipe=recipe)
    assert data.inputs["x"].shape == (4, 3, 8, 8)
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
    np.testing.assert_allclose(data.inputs["x"][0], -1.0)
    np.testing.assert_allclose(data.inputs["x"][3], 1.0)


def test_shipped_recipe_and_image_folder_need_each_other(tmp_path: Path):
    root = Path(__file__).parents[2]
    recipe = Recipe.from_toml(root / "calibration" / "digits.toml")
    assert recipe.size == (8, 8) and recipe.colour == "grey"
    data = load_data(root / "calibration" / "samples" / "digits", recipe=root / "calibration" / "digits.toml")
    assert data.inputs["x"].shape[1:] == (1, 8, 8) and data.size >= 20 and data.labels is not None
    with pytest.raises(DataError, match="no recipe was given"):
        load_data(root / "calibration" / "samples" / "digits")
