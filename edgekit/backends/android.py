"""The Android route: ONNX -> TFLite (onnx2tf), outputs bound by verified mapping, run in LiteRT."""

from __future__ import annotations

from pathlib import Path

from edgekit.backends import onnx2tf
from edgekit.device import DeviceModel
from edgekit.errors import ConversionError
from edgekit.layers import layer_drift
from edgekit.plan import Plan
from edgekit.runners.litert import Binding, LiteRTRunner, interpreter_class, output_step
from edgekit.runners.onnxrt import OnnxRunner
from edgekit.steps.export_onnx import OnnxExport, tensor_modules

MAPPING_SAMPLES = 8


def build_tflite(plan: Plan, export: OnnxExport, workdir: Path) -> DeviceModel:
    """Convert with the user's calibration data, then bind the float32 and the device file's I/O by name/values."""
    calibration = plan.calibration.take(slice(0, plan.options.calibration.max_samples)).inputs
    files = onnx2tf.convert(export, calibration, plan.target, plan.io, workdir)
    samples = plan.calibration.take(slice(0, MAPPING_SAMPLES)).inputs
    with OnnxRunner(export.path) as reference:
        ref_outputs = reference.run(samples)
    float_in = onnx2tf.bind_inputs(files.float32, export)
    float_out, _ = onnx2tf.bind_outputs(files.float32, float_in, samples, ref_outputs)
    with LiteRTRunner(files.float32, float_in, float_out) as float_runner:
        float_outputs = float_runner.run(samples)
    device_in = onnx2tf.bind_inputs(files.device, export)
    device_out, errors = onnx2tf.bind_outputs(files.device, device_in, samples, float_outputs)
    _check_order(export, device_out)
    _, runtime_name, runtime_version = interpreter_class()
    return DeviceModel(
        path=files.device, bundle_name="model.tflite", float_path=files.float32,
        runtime={"name": "litert", "version": runtime_version, "package": runtime_name, "converter": "onnx2tf",
                 "converter_version": files.converter_version},
        bindings={"inputs": [b.to_dict() for b in device_in], "outputs": [b.to_dict() for b in device_out],
                  "mapping": "by name for inputs; outputs by shape and values against the float32 model",
                  "mapping_relative_error": errors},
        open_runner=lambda path: LiteRTRunner(path, device_in, device_out),
        open_float_runner=lambda: LiteRTRunner(files.float32, float_in, float_out),
        output_steps={b.model_name: output_step(files.device, b.device_index) for b in device_out},
        per_layer=(lambda samples: layer_drift(export.path, tensor_modules(export.path), files.float32, files.device,
                                               float_in, device_in, samples)) if plan.target.precision == "int8"
        else None,
    )


def _check_order(export: OnnxExport, outputs: list[Binding]) -> None:
    names = {b.model_name for b in outputs}
    missing = [o.name for o in export.outputs if o.name not in names]
    if missing:
        raise ConversionError(f"device model lacks output(s) {', '.join(missing)}", hint="report this model")

