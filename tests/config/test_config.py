from pathlib import Path

import pytest

from edgekit.config.options import BuildOptions, Calibration, Cluster, Fallback, Gate, Prune
from edgekit.config.target import Target, list_targets, load_target
from edgekit.errors import ConfigError


def test_shipped_android_targets_load_with_their_contract_fields():
    names = {t.name for t in list_targets()}
    assert {"android-arm64-fp32", "android-arm64-fp16", "android-arm64-int8"} <= names
    target = load_target("android-arm64-int8")
    assert (target.platform, target.format, target.precision, target.io, target.runtime) == (
        "android", "tflite", "int8", "float32", "litert")
    assert target.cpu == "cortex-a76" and target.cpu_little == "cortex-a55"


def test_unknown_target_names_the_known_ones():
    with pytest.raises(ConfigError) as info:
        load_target("android-arm64-int4")
    assert info.value.message == "unknown target 'android-arm64-int4'"
    assert "android-arm64-int8" in info.value.hint and info.value.exit_code == 2


def test_target_file_with_a_typo_is_rejected(tmp_path: Path):
    source = (Path(__file__).parents[2] / "targets" / "android-arm64-int8.toml").read_text()
    source = source.replace("precision =", "precisoin =")
    path = tmp_path / "typo.toml"
    path.write_text(source)
    with pytest.raises(ConfigError, match="unknown keys precisoin"):
        Target.from_toml(path)


def test_target_with_int8_io_needs_int8_precision():
    raw = {"name": "x", "description": "", "platform": "android", "arch": "arm64", "format": "tflite",
           "route": "litert",
           "precision": "fp16", "runtime": "litert", "io": "int8"}
    with pytest.raises(ConfigError, match="io = 'int8' needs precision = 'int8'"):
        Target.from_dict(raw)


def test_extra_target_folder_is_searched(tmp_path: Path, monkeypatch):
    source = (Path(__file__).parents[2] / "targets" / "android-arm64-int8.toml").read_text()
    (tmp_path / "my-phone-int8.toml").write_text(source.replace('name = "android-arm64-int8"',
                                                                'name = "my-phone-int8"'))
    monkeypatch.setenv("EDGEKIT_TARGETS", str(tmp_path))
    assert load_target("my-phone-int8").precision == "int8"


@pytest.mark.parametrize("make, message", [
    (lambda: Prune(1.5), "prune = 1.5 is outside [0, 1]"),
    (lambda: Prune(0.5, mode="random"), "prune mode = 'random' is not one of unstructured, structured"),
    (lambda: Cluster(1), "clusters = 1 is outside 2..256"),
    (lambda: Calibration("kl"), "calibration method = 'kl' is not one of minmax, percentile, entropy, mse"),
    (lambda: Gate(min_agreement=99), "min_agreement = 99.0 is outside [0, 1]"),
    (lambda: Gate(max_drop=-1), "max_drop = -1 is outside 0..100 points"),
    (lambda: Fallback("maybe"), "fallback = 'maybe' is not one of none, auto"),
    (lambda: BuildOptions(gate=0.5), "options.gate must be an edgekit.Gate, not float"),
])
def test_options_are_validated_at_construction(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.message == message


def test_options_are_frozen():
    options = BuildOptions()
    with pytest.raises(AttributeError):
        options.gate = Gate(max_drop=2.0)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        options.gate.max_drop = 2.0  # type: ignore[misc]
