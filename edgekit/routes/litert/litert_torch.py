"""The direct Android route: PyTorch -> TFLite with litert-torch (no ONNX, no TensorFlow), quantized with
ai-edge-quantizer from ranges edgekit measures itself, I/O bound by verified mapping, run in LiteRT.

litert-torch keeps the PyTorch layout (NCHW stays NCHW: no transpose), fixes the batch at 1 and names the I/O
generically (args_0.., output_0..): inputs are bound by position, shape and a value cross-check; outputs by
shape and values against the reference ONNX outputs, never by position.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.cache import store as step_cache
from edgekit.cache.keys import file_step, model_key, step_key
from edgekit.config.target import LAYER_PRECISION
from edgekit.errors import ConversionError, ToolError, UnsupportedError, first_line
from edgekit.inputs.plan import Plan
from edgekit.measure.groups import onnx_links
from edgekit.routes.device import DeviceModel
from edgekit.routes.litert.from_onnx import bias_corrected, requantizer, tflite_layers, with_ladder
from edgekit.routes.litert.onnx2tf import bind_outputs
from edgekit.routes.litert.runner import LiteRTRunner, interpreter_class, open_interpreter, output_step
from edgekit.routes.litert.weights import device_weights
from edgekit.runners.binding import Binding
from edgekit.runners.onnxrt import OnnxRunner
from edgekit.transform.export import OnnxExport

EXTRA_HINT = "pip install 'edgekit[litert-torch]'"
MAPPING_SAMPLES = 8
INPUT_CROSS_CHECK = 1e-3  # relative error under which positional inputs count as verified


def litert_torch_version() -> str:
    """The installed litert-torch version; ToolError naming the extra when it (or its quantizer) is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import ai_edge_quantizer  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError as exc:
        raise ToolError(f"converter litert-torch is not installed ({exc})", hint=EXTRA_HINT) from exc
    try:
        return version("litert-torch")
    except PackageNotFoundError as exc:
        raise ToolError("converter litert-torch is not installed", hint=EXTRA_HINT) from exc


def check_model(plan: Plan) -> None:
    """litert-torch converts PyTorch modules only: a model given as ONNX must take the onnx2tf route."""
    if not plan.model.is_torch:
        raise UnsupportedError(f"converter litert-torch needs a PyTorch model; {plan.model.source} is ONNX",
                               hint="use --converter onnx2tf (converter='onnx2tf') for .onnx models")


def build_litert(plan: Plan, export: OnnxExport, workdir: Path) -> DeviceModel:
    """Convert the PyTorch module to float32 .tflite, derive the target's precision, bind I/O by verified mapping."""
    check_model(plan)
    version = litert_torch_version()
    folder = workdir / "litert"
    folder.mkdir(parents=True, exist_ok=True)
    example = _example(plan)
    float_path, converted = converted_litert(plan.model, example, folder / "model_float32.tflite", version,
                                             lambda path: convert_float(plan.model.module, example, path))
    samples = plan.calibration.take(slice(0, MAPPING_SAMPLES)).inputs
    with OnnxRunner(export.path) as reference:
        ref_outputs = reference.run(samples)
    float_in = bind_inputs(float_path, plan)
    float_out, float_errors = bind_outputs(float_path, float_in, samples, ref_outputs)
    _cross_check_inputs(plan, float_errors)
    with LiteRTRunner(float_path, float_in, float_out) as runner:
        float_outputs = runner.run(samples)
    device_path, ranges, reused = _device_file(plan, float_path, float_in, folder)

    def rebuild(path: Path) -> DeviceModel:
        device_in = bind_inputs(path, plan)
        corrected = bias_corrected(plan, export, (path, device_in), (float_path, float_in))
        path = corrected.path
        device_out, errors = bind_outputs(path, device_in, samples, float_outputs)
        device = _device_model(plan, export, (float_path, float_in, float_out), (path, device_in, device_out), errors,
                               version)
        return dataclasses.replace(device, quantization={"bias_correction": corrected.block} if corrected.block else {},
                                   reused=("conversion",) * converted + ("calibration",) * reused)

    device = rebuild(device_path)
    if plan.target.precision not in LAYER_PRECISION:
        return device
    return with_ladder(device, requantizer(plan, export, (float_path, float_in, samples), ranges, (), rebuild, folder))


def _example(plan: Plan) -> tuple:
    import torch

    first = plan.calibration.take(slice(0, 1)).inputs
    return tuple(torch.from_numpy(np.ascontiguousarray(first[spec.name])) for spec in plan.inputs)


def convert_float(module: Any, example: tuple, path: Path) -> tuple[Path, float]:
    """litert_torch.convert at batch 1 (its only batch) to a float32 .tflite; returns the file and the seconds."""
    import litert_torch

    litert_torch.config.show_progress = False
    start = time.perf_counter()
    module = _exportable(module, example)
    try:
        with _quiet():
            model = litert_torch.convert(module, example)
            model.export(str(path))
    except Exception as exc:  # litert-torch raises torch.export, lowering and MLIR errors of many types
        raise UnsupportedError(f"litert-torch cannot convert this model: {type(exc).__name__}: {first_line(exc)}",
                               hint="try --converter onnx2tf, or rewrite the operator named above") from exc
    return path, time.perf_counter() - start


def _exportable(module: Any, example: tuple) -> Any:
    """torch.export cannot trace a ScriptModule: convert TorchScript to an ExportedProgram first."""
    import torch

    if not isinstance(module, torch.jit.ScriptModule):
        return module
    from torch._export.converter import TS2EPConverter

    try:
        with _quiet():
            return TS2EPConverter(module, example).convert().module()
    except Exception as exc:
        raise UnsupportedError(f"litert-torch cannot take this TorchScript model: {first_line(exc)}",
                               hint="save the model as .pt2 (torch.export.save) or use --converter onnx2tf") from exc


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield



def bind_inputs(path: Path, plan: Plan) -> list[Binding]:
    """Device input i is the module's i-th positional argument (args_i); shapes must agree as they are (NCHW)."""
    details = open_interpreter(path).get_input_details()
    if len(details) != len(plan.inputs):
        raise ConversionError(f"{path.name} has {len(details)} inputs, the model {len(plan.inputs)}",
                              hint="report this model to edgekit")
    bindings = []
    for position, spec in enumerate(plan.inputs):
        index = _input_index(details, position)
        detail = details[index]
        if tuple(int(d) for d in detail["shape"]) != tuple(spec.shape):
            raise ConversionError(f"device input {detail['name']} has shape {list(detail['shape'])}, the model's "
                                  f"input {spec.name} {list(spec.shape)}", hint="report this model to edgekit")
        scale, zero_point = detail["quantization"]
        bindings.append(Binding(spec.name, detail["name"], index, None, np.dtype(detail["dtype"]).name, float(scale),
                                int(zero_point)))
    return bindings


def _input_index(details: list[dict], position: int) -> int:
    for index, detail in enumerate(details):
        if detail["name"].split(":")[0].endswith(f"args_{position}"):
            return index
    raise ConversionError(f"no device input args_{position} among {[d['name'] for d in details]}",
                          hint="report this model to edgekit")


def _cross_check_inputs(plan: Plan, errors: dict[str, float]) -> None:
    """Inputs of one shape could be swapped without a shape error: then the outputs' values must confirm the order."""
    shapes = [spec.shape for spec in plan.inputs]
    worst = max(errors.values(), default=0.0)
    if len(set(shapes)) < len(shapes) and worst > INPUT_CROSS_CHECK:
        raise ConversionError(f"cannot verify the order of the device inputs: float32 outputs differ from the "
                              f"reference by {worst:.3g} (relative)", hint="use --converter onnx2tf for this model")


def _device_file(plan: Plan, float_path: Path, inputs: list[Binding],
                 folder: Path) -> tuple[Path, dict | None, bool]:
    """The device model of the target's precision, the activation ranges it was quantized with (None when it has
    none) and whether they came from the step cache."""
    from edgekit.routes.litert.quantize import calibration_ranges, float16_weights, quantize_tflite

    precision = plan.target.precision
    if precision == "fp32":
        return float_path, None, False
    if precision == "fp16":
        return float16_weights(float_path, folder / "model_float16.tflite"), None, False
    ranges, reused = None, False
    if plan.target.calibrated:
        method = plan.options.calibration
        data = plan.calibration.take(slice(0, method.max_samples)).inputs
        # in the device's dtypes: litert-torch takes int64 token ids in as int32
        samples = [{f"args_{i}": data[b.model_name][k:k + 1].astype(b.dtype, copy=False)
                    for i, b in enumerate(inputs)} for k in range(len(data[inputs[0].model_name]))]
        ranges, reused = calibration_ranges(float_path, samples, method.method, method.percentile)
    return quantize_tflite(float_path, ranges, folder / f"model_{precision}_{plan.io}_io.tflite", io=plan.io,
                           precision=precision, weights=plan.options.calibration.weights), ranges, reused


def _device_model(plan: Plan, export: OnnxExport, floats: tuple, device: tuple, errors: dict[str, float],
                  version: str) -> DeviceModel:
    (float_path, float_in, float_out), (device_path, device_in, device_out) = floats, device
    _, runtime_name, runtime_version = interpreter_class()
    return DeviceModel(
        path=device_path, bundle_name="model.tflite", weights=device_weights, float_path=float_path,
        runtime={"name": "litert", "version": runtime_version, "package": runtime_name, "converter": "litert-torch",
                 "converter_version": version},
        bindings={"inputs": [b.to_dict() for b in device_in], "outputs": [b.to_dict() for b in device_out],
                  "layout": "NCHW: litert-torch keeps the PyTorch layout, inputs and outputs are not transposed",
                  "mapping": "inputs by position (args_i = i-th forward argument), equal shapes and an output value "
                             "cross-check; outputs by shape and values against the float32 model",
                  "mapping_relative_error": errors},
        open_runner=lambda path: LiteRTRunner(path, device_in, device_out),
        open_float_runner=lambda: LiteRTRunner(float_path, float_in, float_out),
        output_steps={b.model_name: output_step(device_path, b.device_index) for b in device_out},
        per_layer=tflite_layers(plan, export, float_path, device_path, float_in, device_in),
        layer_links=lambda: onnx_links(export.path),
    )


__all__ = ["bind_inputs", "build_litert", "check_model", "convert_float", "litert_torch_version"]


def converted_litert(model: Any, example: tuple, path: Path, version: str, convert: Any) -> tuple[Path, bool]:
    """litert-torch's float32 .tflite of the model at `path` (`convert(path)` makes it), taken from the step cache
    when the same model was converted for the same example shapes by the same litert-torch; True when it was."""
    if step_cache.cache_root() is None:
        return convert(path)[0], False
    shapes = json.dumps([[list(t.shape), str(t.dtype)] for t in example])
    return path, file_step("litert-torch", step_key("litert-torch", model_key(model), shapes, version), path,
                            convert)
