from pathlib import Path

import numpy as np
import pytest
import torch

import edgekit
from edgekit.errors import ModelError, UnsupportedError
from edgekit.inputs.model import TensorSpec, load_model, sha256_file
from edgekit.runners.onnxrt import OnnxRunner
from edgekit.transform.export import export_onnx, resolve_inputs


def test_pt2_gives_its_input_spec_and_file_hash(digits_files):
    model = load_model(digits_files["pt2"])
    assert model.kind == "exported_program" and model.name == "net"
    assert model.inputs == (TensorSpec("x", (1, 1, 8, 8), "float32"),)
    assert model.sha256 == sha256_file(digits_files["pt2"])


def test_torchscript_and_module_kinds(digits, digits_files):
    assert load_model(digits_files["ts"]).kind == "torchscript"
    module = load_model(digits[0])
    assert module.kind == "module" and module.inputs is None and len(module.sha256) == 64
    assert module.sha256 == load_model(digits[0]).sha256


def test_factory_is_imported_and_called():
    model = load_model("examples.digits:DigitsCNN")
    assert model.kind == "module" and model.name == "DigitsCNN"


@pytest.mark.parametrize("source, message", [
    ("missing.pt2", "model file missing.pt2 does not exist"),
    ("examples.digits:nothing_here", "cannot import examples.digits:nothing_here"),
])
def test_bad_model_sources(source, message):
    with pytest.raises(ModelError) as info:
        load_model(source)
    assert info.value.message.startswith(message) and info.value.exit_code == 2


def test_corrupt_files_are_model_errors(tmp_path: Path):
    for suffix in (".pt2", ".pt", ".onnx"):
        path = tmp_path / f"broken{suffix}"
        path.write_bytes(b"not a model at all")
        with pytest.raises(ModelError, match=f"broken{suffix} is not a"):
            load_model(path)
    (tmp_path / "model.h5").write_bytes(b"")
    with pytest.raises(ModelError, match=r"unknown model format '\.h5'"):
        load_model(tmp_path / "model.h5")


@pytest.mark.parametrize("kind", ["pt2", "ts", "module", "onnx"])
def test_every_model_kind_exports_to_the_same_function(kind, digits, digits_files, tmp_path: Path):
    model, data = digits
    x = data["x_eval"][:8]
    if kind == "onnx":
        torch.onnx.export(model, (torch.from_numpy(x[:1]),), tmp_path / "user.onnx", dynamo=False,
                          input_names=["image"], dynamic_axes={"image": {0: "batch"}})
        loaded = load_model(tmp_path / "user.onnx")
    else:
        loaded = load_model(model if kind == "module" else digits_files[kind])
    inputs = resolve_inputs(loaded, {"x": x.shape[1:]})
    export = export_onnx(loaded, inputs, tmp_path / "out.onnx")
    assert export.inputs[0].shape == (1, 1, 8, 8) and len(export.outputs) == 1
    with OnnxRunner(export.path) as runner:
        got = runner.run({inputs[0].name: x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(next(iter(got.values())), expected, atol=1e-4)


class _Inverse(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.inv(x)


def test_an_operator_without_onnx_export_is_named(tmp_path: Path):
    loaded = load_model(_Inverse())
    with pytest.raises(UnsupportedError) as info:
        export_onnx(loaded, (TensorSpec("input", (1, 4, 4)),), tmp_path / "m.onnx")
    assert "linalg_inv" in info.value.message and info.value.exit_code == 2


def test_a_pt2_with_a_dynamic_batch_is_built_at_batch_1_with_a_note(digits, tmp_path: Path):

    model, data = digits
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.zeros(4, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "dynamic.pt2")
    result = edgekit.build(tmp_path / "dynamic.pt2", "onnxruntime-arm64-fp32", data["x_calib"],
                           (data["x_eval"], data["y_eval"]), tmp_path / "b",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")))
    assert result.passed and result.manifest["device"]["signature"]["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert f"{tmp_path / 'dynamic.pt2'} has a dynamic batch dimension (x): built at batch 1" in \
        result.report["warnings"][0]
