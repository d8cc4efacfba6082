"""Hash-pinned emulator wheels, and LiteRT's INFO line kept off stderr.

The pins: a check of the requirements text and of the pip command (no network), and, marked emulator, the pins
against the files pip really picks for the emulator (downloaded once, through pip's cache) and a tampered pin
that must end in an EmulatorError naming the wheel.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgekit.emulator import setup as _emulator_setup
from edgekit.errors import EmulatorError

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"(?P<requirement>[A-Za-z0-9._-]+==[A-Za-z0-9.]+) --hash=sha256:(?P<digest>[0-9a-f]{64})")

# What pip 23 says when a file does not match its pin (only the URL shortened).
PIP_MISMATCH = """\
WARNING: Location 'file:///opt/pypi/simple/ai-edge-litert/' is ignored: it is neither a file nor a directory.
ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated the package \
versions, please update the hashes. Otherwise, examine the package contents carefully; someone may have tampered \
with them.
    ai-edge-litert==2.3.0 from https://files.pythonhosted.org/ai_edge_litert-2.3.0-cp311-cp311-manylinux_2_27_\
aarch64.whl (from -r /tmp/edgekit-wheels-x/requirements.txt (line 2)):
        Expected sha256 0000000000000000000000000000000000000000000000000000000000000000
             Got        853fc608f96da87bd5f3458465dfb9abbf18d5ae6b94eceacead407146f175ae
"""


# --- the pins, without network -------------------------------------------------------------------------------


def test_the_requirements_pin_every_wheel_to_a_sha256():
    lines = _emulator_setup.pinned_requirements().splitlines()
    pins = [PIN.fullmatch(line) for line in lines]
    assert all(pins), lines
    assert [pin["requirement"] for pin in pins] == list(_emulator_setup.WHEELS)
    assert len({pin["digest"] for pin in pins}) == len(pins)
    assert all(re.fullmatch(r"[a-z0-9-]+==\d+(\.\d+)+", wheel) for wheel in _emulator_setup.WHEELS)


def test_pip_installs_only_the_pinned_requirements_with_hashes_required(monkeypatch, tmp_path):
    seen = {}

    def fake_pip(command, what, apt_config=None, cwd=None, check=True):
        seen["command"] = command
        seen["requirements"] = Path(command[command.index("-r") + 1]).read_text()
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(_emulator_setup, "run_tool", fake_pip)
    _emulator_setup.install_wheels(tmp_path / "site")
    command = seen["command"]
    assert "--require-hashes" in command and "--no-deps" in command and "--only-binary=:all:" in command
    assert not set(_emulator_setup.WHEELS) & set(command)  # every wheel comes from the hashed requirements file
    assert seen["requirements"] == _emulator_setup.pinned_requirements()
    assert command[-len(_emulator_setup.PIP_TARGET) :] == list(_emulator_setup.PIP_TARGET)


def test_a_hash_mismatch_report_becomes_an_emulator_error_naming_the_wheel(monkeypatch, tmp_path):
    monkeypatch.setattr(
        _emulator_setup, "run_tool", lambda command, *a, **k: subprocess.CompletedProcess(command, 1, "", PIP_MISMATCH)
    )
    with pytest.raises(EmulatorError) as caught:
        _emulator_setup.install_wheels(tmp_path / "site")
    message = caught.value.message
    assert message.startswith("the downloaded wheel of ai-edge-litert==2.3.0 does not match its pinned sha256")
    assert "numpy" not in message.splitlines()[0]
    assert "Expected sha256 0000" in message and "WARNING" not in message
    assert "mirror" in caught.value.hint


# --- the pins against the real files (network, through pip's cache) --------------------------------------------


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """The files pip picks for the emulator's tags, downloaded as they are (no hash check) through pip's cache."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(folder),
               *_emulator_setup.PIP_TARGET, *_emulator_setup.WHEELS]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot download the emulator wheels: {done.stderr.strip()[-300:]}")
    return folder


@pytest.fixture
def offline_pip(monkeypatch, wheelhouse):
    """pip (as the setup runs it) finds the wheels in the wheelhouse only."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))


@pytest.mark.emulator
def test_the_pins_are_the_sha256_of_the_files_pip_picks(wheelhouse):
    files = sorted(wheelhouse.glob("*.whl"))
    assert len(files) == len(_emulator_setup.WHEELS)
    by_requirement = {}
    for wheel in files:
        name, version = wheel.name.split("-")[:2]
        assert "cp311" in wheel.name and "aarch64" in wheel.name, wheel.name
        by_requirement[f"{name.replace('_', '-').lower()}=={version}"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert by_requirement == _emulator_setup.WHEEL_SHA256


@pytest.mark.emulator
def test_the_setup_installs_the_pinned_wheels(offline_pip, tmp_path):
    _emulator_setup.install_wheels(tmp_path / "site")
    installed = sorted(p.name for p in (tmp_path / "site").glob("*.dist-info"))
    assert installed == ["ai_edge_litert-2.3.0.dist-info", "numpy-2.1.3.dist-info", "onnxruntime-1.23.0.dist-info",
                         "openvino-2026.4.1.dist-info"]


@pytest.mark.emulator
def test_a_tampered_pin_stops_the_setup_with_an_emulator_error_naming_the_wheel(offline_pip, monkeypatch, tmp_path):
    good = _emulator_setup.WHEEL_SHA256["ai-edge-litert==2.3.0"]
    tampered = {**_emulator_setup.WHEEL_SHA256, "ai-edge-litert==2.3.0": good[::-1]}
    monkeypatch.setattr(_emulator_setup, "WHEEL_SHA256", tampered)
    with pytest.raises(EmulatorError) as caught:
        _emulator_setup.install_wheels(tmp_path / "site")
    message = caught.value.message
    assert message.startswith("the downloaded wheel of ai-edge-litert==2.3.0 does not match its pinned sha256")
    assert f"Expected sha256 {good[::-1]}" in message and good in message
    assert not (tmp_path / "site").exists()


# --- LiteRT's INFO line --------------------------------------------------------------------------------------

INFO_LINE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def test_quiet_litert_drops_only_the_known_info_line(capfd):
    from edgekit.routes.litert.runner import quiet_litert

    with quiet_litert():
        os.write(2, f"{INFO_LINE}\nERROR: a real error\n".encode())
    with pytest.raises(RuntimeError, match="boom"), quiet_litert():
        os.write(2, f"WARNING: said before the error\n{INFO_LINE}\n".encode())
        raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "ERROR: a real error\nWARNING: said before the error\nafter\n"


def test_a_real_model_runs_without_the_info_line_and_litert_errors_still_surface(tmp_path):
    pytest.importorskip("ai_edge_litert")
    (tmp_path / "broken.tflite").write_bytes(b"TFL3" + bytes(60))
    bare = "from ai_edge_litert.interpreter import Interpreter\nInterpreter(model_path=MODEL).allocate_tensors()\n"
    control = _python(bare.replace("MODEL", repr(str(_emulator_setup.TINY_MODEL))), tmp_path)
    if INFO_LINE not in control.stderr:
        pytest.skip("this LiteRT build no longer prints its XNNPACK INFO line")
    script = textwrap.dedent(f"""
        import numpy as np
        from edgekit.emulator.setup import TINY_MODEL, tiny_expected
        from edgekit.runners.binding import Binding
        from edgekit.routes.litert.runner import LiteRTRunner, open_interpreter

        x = (np.arange(24, dtype=np.float32).reshape(3, 8) % 7) - 3
        runner = LiteRTRunner(TINY_MODEL, [Binding("x", "x", 0)], [Binding("Identity", "Identity", 0)])
        assert np.array_equal(runner.run({{"x": x}})["Identity"], tiny_expected(x))
        print("ran the tiny model", flush=True)
        open_interpreter({str(tmp_path / "broken.tflite")!r})
    """)
    done = _python(script, tmp_path)
    assert "ran the tiny model" in done.stdout
    assert INFO_LINE not in done.stderr
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "ValueError: The model is not a valid Flatbuffer buffer"


def _python(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120, check=False)  # fmt: skip

