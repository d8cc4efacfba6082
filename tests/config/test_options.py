"""BuildOptions in groups, the one table the CLI maps its flags through, and the flat keywords of earlier releases."""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import click
import pytest

import edgekit
from edgekit.cli import build_command
from edgekit.config.options import (
    FLAGS,
    GROUPS,
    PYTHON_ONLY,
    BuildOptions,
    Calibration,
    Cluster,
    Conversion,
    Fallback,
    Gate,
    Prune,
    options_from_flags,
    options_from_keywords,
)
from edgekit.errors import ConfigError, DataError
from tests.helpers import ROOT

# the build command's parameters that are not build options: what, where to, and how to print
NOT_OPTIONS = {"model", "target", "out", "force", "calibration", "eval_data", "as_json"}


def _leaf_fields(cls: type, prefix: str = "") -> set[str]:
    """Every dotted field path under a dataclass, descending into the config classes of its fields."""
    found = set()
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        nested = GROUPS.get(f.name) if not prefix else {"prune": Prune, "cluster": Cluster}.get(f.name)
        found |= _leaf_fields(nested, f"{path}.") if nested else {path}
    return found


def test_every_build_flag_has_a_field_and_every_field_a_flag():
    flags = {p.name for p in build_command.params if isinstance(p, click.Option)} - NOT_OPTIONS
    assert flags == set(FLAGS), f"flags without a table row: {flags - set(FLAGS)}; rows without a flag: " \
                                f"{set(FLAGS) - flags}"
    fields = _leaf_fields(BuildOptions)
    assert set(FLAGS.values()) <= fields, f"table rows naming no field: {set(FLAGS.values()) - fields}"
    assert fields - set(FLAGS.values()) == set(PYTHON_ONLY), "a field without a flag (or a stale PYTHON_ONLY)"


def test_the_cli_defaults_are_the_options_defaults():
    """`edgekit build` with no option flags builds exactly BuildOptions()."""
    params = build_command.make_context("build", ["model.pt2", "--target", "android-arm64-int8"]).params
    assert options_from_flags(**{k: v for k, v in params.items() if k not in NOT_OPTIONS}) == BuildOptions()


def test_flags_land_in_their_groups():
    options = options_from_flags(max_drop=2.0, prune=0.5, prune_mode="structured", clusters=16, fallback="auto",
                                 max_float_layers=2, converter="litert-torch", calibration_method="percentile",
                                 percentile=99.9, emulator_seconds=5, task="regress", ignore_index=-100, seed=3)
    assert options.gate == Gate(max_drop=2.0)
    assert options.compression.prune == Prune(0.5, mode="structured")
    assert options.compression.cluster == Cluster(16)
    assert options.fallback == Fallback("auto", max_float_layers=2)
    assert options.conversion == Conversion(converter="litert-torch")
    assert options.calibration == Calibration("percentile", 99.9)
    assert (options.verify.emulator_seconds, options.outputs.task, options.data.ignore_index, options.seed) == (
        5, "regress", -100, 3)
    assert options_from_flags(prune_mode="structured").compression.prune is None  # no --prune: nothing to prune


def test_an_unknown_flag_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match="unknown build option 'max_dorp'") as info:
        options_from_flags(max_dorp=1.0)
    assert "max_drop" in info.value.hint


def test_manifest_options_keep_their_flat_keys():
    """manifest.json config.options is a public record: the grouping does not change its keys."""
    flat = BuildOptions().to_dict()
    assert {"max_drop", "min_agreement", "calibration", "prune", "cluster", "recover", "fallback", "ladder",
            "converter", "emulator", "emulator_samples", "emulator_seconds", "io", "seed", "golden_samples", "holdout",
            "accept_conversion_error", "ignore_index", "allow_small_calibration", "equalize", "task", "outputs",
            "min_sqnr"} <= set(flat)
    assert flat["fallback"] == "none" and flat["ladder"]["max_float_layers"] == 3 and flat["max_drop"] == 1.0


def test_build_takes_at_most_ten_parameters():
    assert len(inspect.signature(edgekit.build).parameters) <= 10


def test_flat_keywords_still_work_with_a_deprecation_warning():
    same = options_from_keywords(max_drop=2.0, prune=Prune(0.5), calibration_method="entropy",
                                 fallback=Fallback("auto", max_size=9000), outputs={"logits": "classify"})
    assert same.gate.max_drop == 2.0 and same.compression.prune == Prune(0.5)
    assert same.calibration.method == "entropy" and same.fallback.max_size == 9000
    assert same.outputs.per_output == {"logits": "classify"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="no calibration data given"):  # past the options: they were taken
            edgekit.build(ROOT / "examples/01_android_int8/digits_cnn.pt2", "android-arm64-int8", max_drop=2.0)
    assert [w.category for w in caught] == [DeprecationWarning]
    assert "options=edgekit.BuildOptions" in str(caught[0].message)


def test_flat_keywords_and_options_together_are_refused():
    with pytest.raises(ConfigError, match="got options= and the flat keywords max_drop"):
        edgekit.build("model.pt2", options=BuildOptions(), max_drop=2.0)


def test_matrix_axes_and_model_settings_are_build_flags():
    """A matrix cell is an `edgekit build` with one flag per axis and per-model setting: each is a row of FLAGS."""
    from edgekit.build_matrix.file import AXES, SETTINGS

    assert set(AXES) - {"target"} <= set(FLAGS) and set(SETTINGS) <= set(FLAGS)
