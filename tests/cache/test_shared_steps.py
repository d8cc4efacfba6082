"""The steps a matrix's cells share (edgekit/cache/keys.py): reused only for the same model and inputs, keyed by
what the model computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.cache import store as step_cache
from edgekit.cache.keys import fetch_arrays, store_arrays
from edgekit.inputs.model import TensorSpec, load_model
from edgekit.measure.reference import reference_outputs
from edgekit.routes.litert.litert_torch import converted_litert
from edgekit.transform.export import exported


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(step_cache.ENV, str(tmp_path / "steps"))
    return tmp_path / "steps"


def test_the_export_is_reused_for_the_same_model_only(cache, tmp_path: Path):
    spec = (TensorSpec("x", (1, 1, 8, 8), "float32"),)
    first, reused = exported(load_model(_net()), spec, tmp_path / "a.onnx")
    assert not reused and first.outputs[0].shape == (1, 3)
    again, reused = exported(load_model(_net()), spec, tmp_path / "b.onnx")  # another instance
    assert reused and again.outputs == first.outputs and again.exporter == first.exporter
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    _, reused = exported(load_model(_net(seed=1)), spec, tmp_path / "c.onnx")  # other weights
    assert not reused
    _, reused = exported(load_model(_net()), (TensorSpec("x", (1, 1, 9, 9), "float32"),),
                                      tmp_path / "d.onnx")
    assert not reused  # another input shape


def test_nothing_is_reused_without_a_step_cache(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(step_cache.ENV, raising=False)
    calls = []
    for name in ("a", "b"):
        _, reused = converted_litert(load_model(_net()), (torch.zeros(1, 1, 8, 8),),
                                                  tmp_path / f"{name}.tflite", "0.10.0",
                                                  lambda path: (calls.append(path), path.write_bytes(b"x"))[::-1])
        assert not reused
    assert len(calls) == 2


def test_a_conversion_is_reused_for_the_same_model_shapes_and_converter(cache, tmp_path: Path):
    calls: list[Path] = []

    def convert(path: Path):
        calls.append(path)
        path.write_bytes(f"tflite {len(calls)}".encode())
        return path, 0.0

    def run(model, version="0.10.0", shape=(1, 1, 8, 8)):
        path = tmp_path / f"m{len(calls)}_{version}_{shape[-1]}.tflite"
        return converted_litert(model, (torch.zeros(shape),), path, version, convert)

    assert run(load_model(_net())) == (tmp_path / "m0_0.10.0_8.tflite", False)
    path, reused = run(load_model(_net()))
    assert reused and path.read_bytes() == b"tflite 1" and len(calls) == 1
    changed = _net()
    with torch.no_grad():
        changed[0].weight[0, 0, 0, 0] += 1e-3  # one weight
    assert not run(load_model(changed))[1] and not run(load_model(_net()), version="0.11.0")[1]
    assert not run(load_model(_net()), shape=(1, 1, 9, 9))[1] and len(calls) == 4


def test_reference_outputs_and_ranges_come_back_as_they_were_stored(cache):
    model = load_model(_net())
    inputs = {"x": np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)}
    outputs = {"logits": np.arange(15, dtype=np.float32).reshape(5, 3)}
    assert reference_outputs(model, inputs, ["logits"], lambda: outputs) == (outputs, False)
    cached, reused = reference_outputs(load_model(_net()), inputs, ["logits"], lambda: {})
    assert reused and np.array_equal(cached["logits"], outputs["logits"])
    other = {"x": inputs["x"] + 1}  # other eval data: computed again
    assert reference_outputs(model, other, ["logits"], lambda: {"logits": outputs["logits"]})[1] is False
    ranges = {"model/conv;Relu": {"min": np.float32([-1.5]), "max": np.float32([2.0])}}
    key = "k" * 64
    store_arrays("ranges", key, {f"{n}\0{side}": r[side] for n, r in ranges.items()
                                              for side in ("min", "max")})
    back = fetch_arrays("ranges", key)
    assert sorted(back) == ["model/conv;Relu\0max", "model/conv;Relu\0min"] and back["model/conv;Relu\0max"][0] == 2.0
