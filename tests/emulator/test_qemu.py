"""The ARM64 emulator: cache location and readiness (fast), and real runs in qemu-aarch64 (marked emulator).

The emulator tests depend on the `emulator_root` fixture (tests/conftest.py), which sets the emulator up once per
session at default_root(), so later runs reuse the cache. That cache is shared: another process may run models in
it (holding its lock shared) while these tests run, so the tests of setup's locking allow for a wait on it. Their
reference is the host's own LiteRT run (default XNNPACK delegate) of the same model and inputs: INT8
must be bit-exact, float32 within 1e-5.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from edgekit.emulator import qemu as emulator
from edgekit.emulator import setup as _emulator_setup
from edgekit.errors import DataError, EmulatorError

SAMPLES = 16


def host_run(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The host's LiteRT, default delegate, one sample at a time: what the emulator must reproduce."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model), num_threads=1)
    interpreter.allocate_tensors()
    by_name = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    collected: dict[str, list[np.ndarray]] = {d["name"]: [] for d in interpreter.get_output_details()}
    for i in range(len(next(iter(inputs.values())))):
        for name, array in inputs.items():
            interpreter.set_tensor(by_name[name], array[i : i + 1])
        interpreter.invoke()
        for detail in interpreter.get_output_details():
            collected[detail["name"]].append(interpreter.get_tensor(detail["index"]))
    return {name: np.concatenate(values) for name, values in collected.items()}


def input_details(model: Path) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(model)).get_input_details()


# --- without the emulator -----------------------------------------------------------------------------------


def test_default_root_honours_edgekit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "/elsewhere")
    assert emulator.default_root() == tmp_path / "emulator"


def test_default_root_falls_back_to_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert emulator.default_root() == tmp_path / "edgekit" / "emulator"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert emulator.default_root() == tmp_path / "home" / ".cache" / "edgekit" / "emulator"


def test_empty_root_is_not_ready(tmp_path):
    assert emulator.is_ready(tmp_path) is False
    assert emulator.status(tmp_path) == {
        "ready": False, "root": str(tmp_path), "size_bytes": 0, "qemu": None, "python": None, "litert": None,
        "onnxruntime": None, "openvino": None,
    }  # fmt: skip


def test_a_marker_without_the_binaries_is_not_ready(tmp_path):
    (tmp_path / emulator.MARKER).write_text(json.dumps({"format": emulator.MARKER_FORMAT, "qemu": "10.0.2"}))
    assert emulator.is_ready(tmp_path) is False


def test_run_without_setup_says_how_to_set_it_up(tmp_path):
    inputs = {"x": np.zeros((1, 8), np.float32)}
    with pytest.raises(EmulatorError, match="not set up") as raised:
        emulator.run_model(_emulator_setup.TINY_MODEL, inputs, root=tmp_path / "missing")
    assert "edgekit emulator setup" in raised.value.hint
    assert raised.value.exit_code == 1


def test_inputs_with_different_sample_counts_are_rejected_before_running(tmp_path):
    inputs = {"a": np.zeros((2, 8), np.float32), "b": np.zeros((3, 8), np.float32)}
    with pytest.raises(DataError, match="same number of samples"):
        emulator.run_model(_emulator_setup.TINY_MODEL, inputs, root=tmp_path)


def test_shipped_verification_model_computes_its_formula():
    samples = np.arange(-12, 12, dtype=np.float32).reshape(3, 8)
    outputs = host_run(_emulator_setup.TINY_MODEL, {"x": samples})
    assert list(outputs) == ["Identity"]
    np.testing.assert_array_equal(outputs["Identity"], _emulator_setup.tiny_expected(samples))


# --- with the emulator --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """A small CNN (conv, conv stride 2, mean, dense) as float32 and as full-integer INT8 TFLite files."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.3, (3, 3, 3, 8)), rng.normal(0, 0.2, (3, 3, 8, 16))
    w3, b3 = rng.normal(0, 0.3, (16, 10)), rng.normal(0, 0.1, 10)

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32, name="image")])
    def cnn(image):
        x = tf.nn.relu(tf.nn.conv2d(image, w1.astype(np.float32), 1, "SAME"))
        x = tf.nn.relu(tf.nn.conv2d(x, w2.astype(np.float32), 2, "SAME"))
        return {
            "logits": tf.matmul(tf.reduce_mean(x, axis=[1, 2]), w3.astype(np.float32)) + b3.astype(np.float32)
        }

    def converter():
        return tf.lite.TFLiteConverter.from_concrete_functions([cnn.get_concrete_function()], cnn)

    folder = tmp_path_factory.mktemp("models")
    (folder / "float32.tflite").write_bytes(converter().convert())
    int8 = converter()
    int8.optimizations = [tf.lite.Optimize.DEFAULT]
    int8.representative_dataset = lambda: ([rng.random((1, 16, 16, 3), np.float32)] for _ in range(32))
    int8.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    int8.inference_input_type = int8.inference_output_type = tf.int8
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": int8 I/O is the point
        warnings.simplefilter("ignore", UserWarning)
        (folder / "int8.tflite").write_bytes(int8.convert())
    return {"float32": folder / "float32.tflite", "int8": folder / "int8.tflite"}


def waiting_message(root: Path) -> str:
    return f"waiting for another emulator setup at {root} to finish"


def float_inputs(model: Path, samples: int = SAMPLES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {d["name"]: rng.random((samples, *d["shape"][1:]), np.float32) for d in input_details(model)}


def int8_inputs(model: Path) -> dict[str, np.ndarray]:
    """Quantised by the caller, as run_model expects, with each input tensor's own scale and zero point."""
    quantised = {}
    for detail, values in zip(input_details(model), float_inputs(model).values(), strict=True):
        scale, zero_point = detail["quantization"]
        quantised[detail["name"]] = np.clip(np.round(values / scale) + zero_point, -128, 127).astype(np.int8)
    return quantised


@pytest.mark.emulator
def test_setup_again_changes_nothing(emulator_root):
    messages: list[str] = []
    result = emulator.setup(emulator_root, progress=messages.append)
    assert result["changed"] is False
    assert result["ready"] is True
    assert messages[-1] == f"ARM64 emulator already set up at {emulator_root}"
    # the one other message allowed: another process was running a model in the shared cache when setup began
    assert messages[:-1] in ([], [waiting_message(emulator_root)])


@pytest.mark.emulator
def test_status_is_ready_small_and_names_the_versions(emulator_root):
    with emulator._lock(emulator_root, exclusive=False):  # no other process's setup is under way meanwhile
        status = emulator.status(emulator_root)
        staging = list(emulator_root.glob(".build-*"))
    assert status["ready"] is True
    assert 50e6 < status["size_bytes"] < 400e6
    assert status["qemu"].startswith("10.")
    assert status["python"].startswith("3.11.")
    # the guest's LiteRT is the host's own version: INT8 is bit-exact only between equal builds
    assert status["litert"] == version("ai-edge-litert")
    assert not staging, "a staging folder was left behind"


@pytest.mark.emulator
def test_a_second_setup_waits_for_the_first_then_finds_it_ready(emulator_root):
    messages: list[str] = []
    results: list[dict] = []
    with open(emulator_root / emulator.LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a first setup still building would
        second = threading.Thread(
            target=lambda: results.append(emulator.setup(emulator_root, messages.append))
        )
        second.start()
        time.sleep(0.5)
        assert second.is_alive()
        assert messages == [waiting_message(emulator_root)]
        fcntl.flock(held, fcntl.LOCK_UN)
    second.join(timeout=120)  # other processes' runs in the shared cache may hold it shared a while longer
    assert not second.is_alive() and results[0]["changed"] is False


@pytest.mark.emulator
def test_float32_matches_the_host_within_1e_5(emulator_root, models):
    inputs = float_inputs(models["float32"])
    device = emulator.run_model(models["float32"], inputs, root=emulator_root)
    host = host_run(models["float32"], inputs)
    assert list(device) == list(host)
    for name, expected in host.items():
        assert device[name].dtype == np.float32
        assert device[name].shape == expected.shape == (SAMPLES, 10)
        np.testing.assert_allclose(device[name], expected, rtol=0, atol=1e-5)


@pytest.mark.emulator
def test_int8_is_bit_exact_with_the_host(emulator_root, models):
    inputs = int8_inputs(models["int8"])
    device = emulator.run_model(models["int8"], inputs, root=emulator_root, cpu="cortex-a55")
    host = host_run(models["int8"], inputs)
    assert list(device) == list(host)
    for name, expected in host.items():
        assert device[name].dtype == np.int8
        assert device[name].shape == (SAMPLES, 10)
        np.testing.assert_array_equal(device[name], expected)
        assert len(np.unique(expected)) > 5, "a constant output would prove nothing"


@pytest.mark.emulator
def test_a_run_over_its_time_limit_is_stopped(emulator_root, models):
    with pytest.raises(EmulatorError, match=r"timed out after 0\.3 s"):
        emulator.run_model(
            models["float32"], float_inputs(models["float32"]), timeout_s=0.3, root=emulator_root
        )


@pytest.mark.emulator
def test_inputs_that_do_not_fit_the_model_are_a_data_error(emulator_root, models):
    inputs = {"not_an_input": np.zeros((2, 16, 16, 3), np.float32)}
    with pytest.raises(DataError, match="the model's inputs are"):
        emulator.run_model(models["float32"], inputs, root=emulator_root)


@pytest.mark.emulator
def test_a_failing_emulator_reports_the_tail_of_its_stderr(emulator_root, models):
    with pytest.raises(EmulatorError, match="exit code 1") as raised:
        emulator.run_model(
            models["float32"], float_inputs(models["float32"]), cpu="no-such-cpu", root=emulator_root
        )
    assert "no-such-cpu" in raised.value.message
