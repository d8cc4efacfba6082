"""The Android route: ONNX -> TFLite (onnx2tf), outputs bound by verified mapping, run in LiteRT.

INT8 comes from one of two quantizers over the same float32 model: onnx2tf's own (the TFLite converter's
min/max calibration; the default) or ai-edge-quantizer with ranges edgekit measures over the whole calibration
set (any --calibration-method, and the accuracy fallback, which keeps chosen layers in float). The other
quantized precisions (int16x8, dynamic-int8, w4) always come from ai-edge-quantizer over the float32 model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

from edgekit.config.target import CALIBRATED, LAYER_PRECISION
from edgekit.errors import ConversionError
from edgekit.inputs.plan import Plan
from edgekit.measure.groups import onnx_links
from edgekit.measure.layers import layer_samples
from edgekit.routes.device import WEIGHT_ONLY, DeviceModel, step_name
from edgekit.routes.litert import onnx2tf
from edgekit.routes.litert.bias_correction import SAMPLES as BIAS_SAMPLES
from edgekit.routes.litert.bias_correction import Corrected, correct_biases
from edgekit.routes.litert.fidelity import convert_checked
from edgekit.routes.litert.layers import layer_drift
from edgekit.routes.litert.mixed import mixed_range_concats
from edgekit.routes.litert.quantize import RECIPES, calibration_ranges
from edgekit.routes.litert.runner import LiteRTRunner, interpreter_class, output_step
from edgekit.routes.litert.weight_layers import weight_layer_drift
from edgekit.routes.litert.weights import device_weights
from edgekit.runners.binding import Binding
from edgekit.transform.export import OnnxExport, tensor_modules

MAPPING_SAMPLES = 8
_LAYOUT_OPS = ("RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS")


def uses_ai_edge_quantizer(plan: Plan) -> bool:
    """INT8 from ai-edge-quantizer with edgekit's ranges (any method but minmax, when a fallback may be needed, or
    after a fine-tune: the TFLite converter's calibration gives some MULs of a LayerNorm wider ranges than their
    values take, and the simulation rounds on the measured ones), and every precision onnx2tf does not write
    itself."""
    precision = plan.target.precision
    calibration = plan.options.calibration
    if precision == "int8":
        return (plan.fine_tuned or calibration.method != "minmax" or calibration.weights != "minmax"
                or plan.options.fallback.mode == "auto")
    return precision in RECIPES


def tflite_layers(plan: Plan, export: OnnxExport, float_path: Path, device_path: Path, float_in: list[Binding],
                  device_in: list[Binding]):
    """The device model's `per_layer`: activation rows for calibrated precisions, weight rows for weight-quantized
    ones, None for float targets."""
    precision = plan.target.precision
    if precision in CALIBRATED:
        return lambda samples: layer_drift(export.path, tensor_modules(export.path), float_path, device_path,
                                           float_in, device_in, samples)
    if precision in LAYER_PRECISION:
        return lambda samples: weight_layer_drift(export.path, tensor_modules(export.path), float_path, device_path,
                                                  float_in, device_in, samples, LAYER_PRECISION[precision])
    return None


def build_tflite(plan: Plan, export: OnnxExport, workdir: Path) -> DeviceModel:
    """Convert with the user's calibration data, then bind the float32 and the device file's I/O by name/values."""
    calibration = plan.calibration.take(slice(0, plan.options.calibration.max_samples)).inputs
    mixed = mixed_range_concats(export.path, calibration) if plan.target.precision == "int8" else {}
    own = uses_ai_edge_quantizer(plan) or bool(mixed)
    target = dataclasses.replace(plan.target, precision="fp32", io="float32") if own else plan.target
    # the float check and the tensor mapping keep every activation of these samples: as many as fit the budget
    samples = plan.calibration.take(slice(0, layer_samples(export.path, MAPPING_SAMPLES))).inputs
    checked = convert_checked(export, calibration, target, plan.io, workdir, samples,
                              plan.options.conversion.accept_conversion_error)  # repairs, then the float32 check
    files, export, float_in = checked.files, checked.export, checked.float_in  # export: what onnx2tf converted
    floats = _FloatModel(files.float32, float_in, checked.float_out, checked.float_outputs, samples)
    quantizer = {"quantizer": "onnx2tf (TFLite converter)"}
    device_path = files.device
    if own:
        ranges, reused = _ranges(plan, files.float32, float_in, calibration) if plan.target.calibrated else (None, 0)
        keep = _tflite_names(export, floats, list(mixed))
        device_path = _quantize(plan, files.float32, ranges, workdir / f"model_{plan.target.precision}.tflite", keep)
        quantizer = {"quantizer": "ai-edge-quantizer (edgekit ranges)", "ranges": ranges, "keep": keep,
                     "reused": ("calibration",) * reused}
    runtime = {"converter": "onnx2tf", "converter_version": files.converter_version}
    device = _device_model(plan, export, floats, device_path, runtime, quantizer, workdir)
    notes = [f"{name} joins tensors of very different ranges (max |x| {', '.join(f'{p:.3g}' for p in peaks)}): "
             "kept in float so each input keeps its own INT8 scale" if peaks else
             f"{name} joins the outputs of mixed-range concats: kept in float too, one INT8 scale would lose the "
             "small rows again" for name, peaks in mixed.items()]
    return dataclasses.replace(device, notes=[*device.notes, *checked.notes, *notes], conversion=checked.conversion,
                               bindings={**device.bindings, "repairs": checked.conversion["repairs"]})


def _tflite_names(export: OnnxExport, floats: _FloatModel, onnx_names: list[str]) -> tuple[str, ...]:
    """The float32 TFLite tensors that carry the given ONNX tensors (matched by value)."""
    if not onnx_names:
        return ()
    from edgekit.measure.layers import match_to_onnx, onnx_activations
    from edgekit.routes.litert.layers import tflite_activations

    to_onnx = match_to_onnx(tflite_activations(floats.path, floats.inputs, floats.samples),
                            onnx_activations(export.path, floats.samples))
    return _through_layout_ops(floats.path, [t for t, o in to_onnx.items() if o in onnx_names])


def _through_layout_ops(float_path: Path, tensors: list[str]) -> tuple[str, ...]:
    """`tensors` and the layout-only ops (reshape, transpose) next to them: those that write a kept tensor from
    another, and those between two kept tensors (a concat that joins reshaped concats). In INT8 such an op would
    give the values one scale again."""
    from edgekit.routes.litert.runner import open_interpreter

    interpreter = open_interpreter(float_path)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    producers = {names[int(op["outputs"][0])]: op for op in interpreter._get_ops_details()
                 if op["op_name"] != "DELEGATE" and len(op["outputs"])}

    def layout_source(name: str) -> str | None:
        op = producers.get(name)
        return names[int(op["inputs"][0])] if op is not None and op["op_name"] in _LAYOUT_OPS else None

    found = list(dict.fromkeys(tensors))
    for tensor in list(found):
        source = layout_source(tensor)  # the kept tensor is a reshape of the op that computed it
        while source is not None and source not in found:
            found.append(source)
            source = layout_source(source)
    kept = set(found)
    for tensor in list(found):  # layout ops between two kept tensors
        op = producers.get(tensor)
        for index in op["inputs"] if op is not None else ():
            path, name = [], names.get(int(index))
            while name is not None and layout_source(name) is not None:
                path.append(name)
                name = layout_source(name)
            if path and name in kept:
                found.extend(p for p in path if p not in found)
    return tuple(found)


@dataclasses.dataclass(frozen=True)
class _FloatModel:
    path: Path
    inputs: list[Binding]
    outputs: list[Binding]
    sample_outputs: dict
    samples: dict


def _ranges(plan: Plan, float_path: Path, float_in: list[Binding], calibration: dict) -> tuple[dict, bool]:
    """Activation ranges of the float32 model over the whole calibration set, with the chosen method (True: taken
    from the step cache)."""

    names = _signature_inputs(float_path, float_in)
    count = len(next(iter(calibration.values())))
    samples = [{names[b.model_name]: b.encode(calibration[b.model_name][i:i + 1]) for b in float_in}
               for i in range(count)]
    method = plan.options.calibration
    return calibration_ranges(float_path, samples, method.method, method.percentile)


def _signature_inputs(float_path: Path, float_in: list[Binding]) -> dict[str, str]:
    """Model input name -> signature input name (onnx2tf keeps the ONNX names in the signature)."""
    from edgekit.routes.litert.runner import open_interpreter

    signature = next(iter(open_interpreter(float_path).get_signature_list().values()))["inputs"]
    if len(signature) == 1 and len(float_in) == 1:
        return {float_in[0].model_name: signature[0]}
    missing = [b.model_name for b in float_in if b.model_name not in signature]
    if missing:
        raise ConversionError(f"float32 model signature lacks input(s) {missing}", hint="report this model")
    return {b.model_name: b.model_name for b in float_in}


def _quantize(plan: Plan, float_path: Path, ranges: dict | None, out: Path, float_tensors: tuple[str, ...],
              int16_tensors: tuple[str, ...] = (), weight_only: tuple[str, ...] = ()) -> Path:
    from edgekit.routes.litert.quantize import quantize_tflite

    def scopes(names):  # an op's scope: "out1;out2;...;"
        return tuple(f"^{re.escape(name)};" for name in names)

    return quantize_tflite(float_path, ranges, out, io=plan.io, float_ops=scopes(float_tensors),
                           precision=plan.target.precision, int16_ops=scopes(int16_tensors),
                           weights=plan.options.calibration.weights, weight_only_ops=scopes(weight_only))


def bias_corrected(plan: Plan, export: OnnxExport, device: tuple[Path, list[Binding]],
                   floats: tuple[Path, list[Binding]]) -> Corrected:
    """The INT8 device model with empirical bias correction (edgekit/routes/litert/bias_correction.py) under
    --equalize auto/on, measured on the first calibration samples that fit the layer budget. Not after a
    fine-tune (`--qat`): the weights were trained for the rounding the simulation applies, biases included, and a
    correction toward the float32 model moves the device away from what was trained for."""
    (path, device_in), (float_path, float_in) = device, floats
    if plan.target.precision != "int8" or plan.options.conversion.equalize == "off" or plan.fine_tuned:
        return Corrected(path, None)
    samples = plan.calibration.take(slice(0, layer_samples(export.path, BIAS_SAMPLES))).inputs
    return correct_biases(path, device_in, float_path, float_in, samples, plan.options.conversion.equalize,
                          path.with_name(f"{path.stem}_bias_corrected.tflite"))


def _device_model(plan: Plan, export: OnnxExport, floats: _FloatModel, device_path: Path, runtime: dict,
                  quantizer: dict, workdir: Path) -> DeviceModel:
    device_in = onnx2tf.bind_inputs(device_path, export)
    corrected = bias_corrected(plan, export, (device_path, device_in), (floats.path, floats.inputs))
    device_path = corrected.path
    device_out, errors = onnx2tf.bind_outputs(device_path, device_in, floats.samples, floats.sample_outputs)
    _check_order(export, device_out)
    _, runtime_name, runtime_version = interpreter_class()
    quantized = plan.target.precision in LAYER_PRECISION
    device = DeviceModel(
        path=device_path, bundle_name="model.tflite", weights=device_weights, float_path=floats.path,
        runtime={"name": "litert", "version": runtime_version, "package": runtime_name, **runtime,
                 "quantizer": quantizer["quantizer"] if quantized else None},
        bindings={"inputs": [b.to_dict() for b in device_in], "outputs": [b.to_dict() for b in device_out],
                  "mapping": "by name for inputs; outputs by shape and values against the float32 model",
                  "mapping_relative_error": errors},
        open_runner=lambda path: LiteRTRunner(path, device_in, device_out),
        open_float_runner=lambda: LiteRTRunner(floats.path, floats.inputs, floats.outputs),
        output_steps={b.model_name: output_step(device_path, b.device_index) for b in device_out},
        per_layer=tflite_layers(plan, export, floats.path, device_path, floats.inputs, device_in),
        layer_links=lambda: onnx_links(export.path),
        quantization={"bias_correction": corrected.block} if corrected.block else {},
        reused=quantizer.get("reused", ()),
    )
    if "keep" not in quantizer:  # onnx2tf's own INT8: no per-layer control
        return device
    return with_ladder(device, requantizer(
        plan, export, (floats.path, floats.inputs, floats.samples), quantizer["ranges"], quantizer["keep"],
        lambda path: _device_model(plan, export, floats, path, runtime, quantizer, workdir), workdir))


def with_ladder(device: DeviceModel, with_precisions) -> DeviceModel:
    return dataclasses.replace(device, with_precisions=with_precisions,
                               with_float=lambda rows: with_precisions({"float32": rows}))


def requantizer(plan: Plan, export: OnnxExport, floats: tuple[Path, list[Binding], dict], ranges: dict | None,
                keep: tuple[str, ...], rebuild: Callable[[Path], DeviceModel], workdir: Path):
    """`with_precisions` of a model ai-edge-quantizer wrote: re-quantize the same float32 model with the same
    ranges, the given `layers` rows in 16x8 or float. The ops that write a row's activation and the ops that read
    it move together (a producer alone would be re-quantized for its readers with the same bad range).
    `floats`: the float32 .tflite, its input bindings and the samples that name its tensors by module."""
    float_path, float_in, samples = floats

    def with_precisions(moves: dict[str, list[dict]]) -> DeviceModel:
        # a weight-quantized layer is its own op: its readers keep their own weights
        scopes = {precision: _producer_and_consumer_outputs(float_path, [r.get("float_tensor") or r["device_tensor"]
                                                                          for r in rows], plan.target.calibrated)
                  for precision, rows in moves.items() if rows}
        in_float = scopes.get("float32", [])
        in_w8 = [op for op in scopes.get(WEIGHT_ONLY, []) if op not in in_float]
        in_16 = [op for op in scopes.get("int16x8", []) if op not in in_float and op not in in_w8]
        name = step_name(moves)
        path = _quantize(plan, float_path, ranges, workdir / f"model_{plan.target.precision}_{name}.tflite",
                         (*keep, *in_float), tuple(in_16), tuple(in_w8))
        device = rebuild(path)
        return dataclasses.replace(device, float_modules=_modules_of(export, float_path, float_in, samples, in_float))

    return with_precisions


def _producer_and_consumer_outputs(float_path: Path, tensors: list[str], readers: bool = True) -> list[str]:
    """Output tensor names (op scopes) of the ops that write (and, with `readers`, read) `tensors` in the float32
    model."""
    from edgekit.routes.litert.runner import open_interpreter

    interpreter = open_interpreter(float_path)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    wanted = {i for i, n in names.items() if n in tensors}
    found = []
    for op in interpreter._get_ops_details():  # no public API lists the graph's ops
        touched = (*op["inputs"], *op["outputs"]) if readers else op["outputs"]
        if op["op_name"] != "DELEGATE" and wanted & {int(i) for i in touched}:
            found.append(names[int(op["outputs"][0])])
    return list(dict.fromkeys(found))


def _modules_of(export: OnnxExport, float_path: Path, float_in: list[Binding], samples: dict,
                tensors: list[str]) -> tuple[str, ...]:
    """PyTorch modules of float32 TFLite tensors (the first module of each fused group, as in `layers`)."""
    import onnx

    from edgekit.measure.layers import fused_modules, match_to_onnx, onnx_activations
    from edgekit.routes.litert.layers import tflite_activations

    if not tensors:
        return ()
    to_onnx = match_to_onnx(tflite_activations(float_path, float_in, samples), onnx_activations(export.path, samples))
    graph, modules, stops = onnx.load(str(export.path)).graph, tensor_modules(export.path), set(to_onnx.values())
    names = []
    for tensor in tensors:
        onnx_name = to_onnx.get(tensor)
        group = fused_modules(graph, onnx_name, stops - {onnx_name}, modules) if onnx_name else []
        names.append(group[0] if group else modules.get(onnx_name or "", tensor))
    return tuple(dict.fromkeys(names))


def _check_order(export: OnnxExport, outputs: list[Binding]) -> None:
    names = {b.model_name for b in outputs}
    missing = [o.name for o in export.outputs if o.name not in names]
    if missing:
        raise ConversionError(f"device model lacks output(s) {', '.join(missing)}", hint="report this model")
