"""The I/O contract (docs/design.md): whatever precision a layer takes inside, every shipped device model takes
and returns float32 by default. Read from the files themselves (the runtime's own view of the model), on every
route and precision, and after every ladder step (each rung applied to every layer, and to the output layer alone,
where a 16x8 rung once made the output int16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.config.options import options_from_keywords
from edgekit.errors import ConversionError
from edgekit.pipeline.prepare import prepare
from edgekit.routes import get_route
from edgekit.routes.device import DeviceModel, check_io
from edgekit.transform.export import export_onnx
from examples.digits import load_digits_split
from tests.helpers import shipped_digits_cnn

pytestmark = pytest.mark.slow
TARGETS = [  # (target, converter): every route, every precision
    ("android-arm64-int8", "litert-torch"), ("android-arm64-int8", "onnx2tf"), ("android-arm64-int16x8", None),
    ("android-arm64-dynamic-int8", None), ("android-arm64-w4", None), ("android-arm64-fp16", None),
    ("android-arm64-fp32", None), ("onnxruntime-arm64-int8", None), ("onnxruntime-arm64-fp32", None),
    ("openvino-x86-int8", None), ("openvino-x86-fp32", None), ("android-arm64-executorch-int8", None),
    ("android-arm64-executorch-fp32", None), ("jetson-orin-int8", None), ("jetson-orin-fp16", None)]
TORCH_FLOAT = 6  # ExecuTorch's ScalarType of float32


def file_io(path: Path) -> list[str]:
    """The dtypes of the model file's inputs and outputs, as its own runtime reads them."""
    if path.suffix == ".tflite":
        from edgekit.routes.litert.runner import open_interpreter

        interpreter = open_interpreter(path)
        details = [*interpreter.get_input_details(), *interpreter.get_output_details()]
        return [np.dtype(d["dtype"]).name for d in details]
    if path.suffix in (".onnx", ".ort"):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [{"tensor(float)": "float32"}.get(t.type, t.type) for t in (*session.get_inputs(),
                                                                            *session.get_outputs())]
    if path.suffix == ".xml":
        import openvino

        model = openvino.Core().read_model(str(path))
        return [p.get_element_type().to_dtype().name for p in (*model.inputs, *model.outputs)]
    if path.suffix == ".pte":
        from executorch.runtime import Runtime

        meta = Runtime.get().load_program(path).load_method("forward").metadata
        metas = [*map(meta.input_tensor_meta, range(meta.num_inputs())),
                 *map(meta.output_tensor_meta, range(meta.num_outputs()))]
        return ["float32" if m.dtype() == TORCH_FLOAT else f"scalar type {m.dtype()}" for m in metas]
    raise AssertionError(f"no reader for {path.suffix}")


def _built(target: str, converter: str | None, folder: Path):
    data = load_digits_split(0)
    options = options_from_keywords(emulator="host", converter=converter, fallback="auto")
    plan = prepare(shipped_digits_cnn(), target, data["x_calib"][:32], data["x_eval"][:32], folder / "out", options,
                   True)
    export = export_onnx(plan.model, plan.inputs, folder / "reference.onnx")
    route = get_route(plan.target.route)
    (folder / "work").mkdir()  # a build's work folder exists before its route runs (edgekit/utils/outdir.py)
    device = route.build(plan, export, folder / "work")
    return plan, route, device


def _shipped(device: DeviceModel) -> Path:
    """The file the bundle ships as the device model (the Jetson route ships its Q/DQ ONNX, built on the device)."""
    return device.path


@pytest.mark.parametrize(("target", "converter"), TARGETS, ids=[f"{t}-{c}" if c else t for t, c in TARGETS])
def test_every_route_and_precision_ships_float32_io(target, converter, tmp_path: Path):
    plan, route, device = _built(target, converter, tmp_path)
    assert set(file_io(_shipped(device))) == {"float32"}, (target, file_io(_shipped(device)))
    check_io(device, plan.io)
    if device.per_layer is None or not (device.with_float or device.with_precisions):
        return
    rows = device.per_layer({k: v[:8] for k, v in plan.evaluation.inputs.items()})
    last = [r for r in rows if r["tensor"] in {o.name for o in plan.inputs} | {"output"}] or rows[:1]
    rungs = [*route.ladder(plan.target), *filter(None, [route.back_off(plan.target)])]
    for rung in dict.fromkeys(rungs):
        for moved in (rows, last):
            try:
                trial = route.set_precisions(device, {r["tensor"]: rung for r in moved}, rows, plan.target)
            except edgekit.EdgekitError as exc:  # a step the route refuses is not taken (fallback records why)
                assert "I/O contract" not in exc.message, exc.message
                continue
            assert set(file_io(_shipped(trial))) == {"float32"}, (target, rung, len(moved), file_io(trial.path))


def test_a_step_that_changes_the_io_is_refused(tmp_path: Path):
    """What the contract refuses: a rebuild whose output became int16 (the CREPE case before the fix)."""
    def device(dtype: str) -> DeviceModel:
        binding = {"model_name": "y", "device_name": "y", "device_index": 0, "to_device": None, "dtype": dtype,
                   "scale": 3.05e-5 if dtype == "int16" else 0.0, "zero_point": 0}
        x = {**binding, "model_name": "x", "dtype": "float32", "scale": 0.0}
        return DeviceModel(tmp_path, "m", None, {}, {"inputs": [x], "outputs": [binding]}, open_runner=None,
                           open_float_runner=None)

    check_io(device("float32"), "float32")
    with pytest.raises(ConversionError, match=r"output y is int16 \(promised float32\)"):
        check_io(device("int16"), before=device("float32"))
    with pytest.raises(ConversionError, match=r"output y is int16 \(promised float32\)"):
        check_io(device("int16"), "float32")
