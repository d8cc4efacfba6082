"""The Jetson route: a Q/DQ ONNX (INT8) or the float ONNX (FP16) that TensorRT builds on the device, measured on the
host in onnxruntime (TensorRT itself where TensorRT and a CUDA GPU are present), with the engine build scripts."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

from edgekit.config.options import Calibration
from edgekit.errors import ConversionError, UnsupportedError
from edgekit.inputs.plan import Plan
from edgekit.measure.groups import onnx_links
from edgekit.measure.layers import layer_samples, qdq_layer_drift
from edgekit.routes.calibrate import RangeCollector, SampleReader, onnx_values, quiet_quantization
from edgekit.routes.device import DeviceModel, onnx_bindings, step_name
from edgekit.routes.tensorrt.engine_scripts import check_profile, write_scripts
from edgekit.runners.base import Runner
from edgekit.runners.onnxrt import OnnxRunner, saturating_host
from edgekit.transform.export import OnnxExport, tensor_modules

# TensorRT fuses Q/DQ best on the inputs of its weighted layers; everything between stays float (FP16 on the device)
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
CALIBRATION_CHUNK = 32  # samples per collect pass: onnxruntime keeps every calibrated tensor of a pass in memory
BUNDLE_NAMES = {"int8": "model.qdq.onnx", "fp16": "model.onnx"}


def build_qdq_onnx(plan: Plan, export: OnnxExport, workdir: Path,
                   float_tensors: frozenset[str] = frozenset()) -> DeviceModel:
    """INT8: quantize the export into a symmetric Q/DQ ONNX; FP16: ship the export. Both with build_engine.sh/.py.

    `float_tensors`: activations whose Q/DQ is left out (their consumers run in FP16): the accuracy fallback."""
    check_request(plan)
    precision, start = plan.target.precision, time.perf_counter()
    if precision == "int8":
        calibration = plan.calibration.take(slice(0, plan.options.calibration.max_samples)).inputs
        path = quantize_qdq(export.path, calibration, plan.options.calibration, workdir, float_tensors)
    else:
        path = export.path
    seconds = time.perf_counter() - start
    _check_io(path, export)
    scripts = write_scripts(plan.target, BUNDLE_NAMES[precision], workdir)
    bindings = onnx_bindings(export)
    engine = host_tensorrt(scripts["build_engine.py"])
    return DeviceModel(
        path=path, bundle_name=BUNDLE_NAMES[precision], float_path=export.path,
        runtime=_runtime(plan, engine), bindings=bindings,
        open_runner=_device_runner(precision, engine, bindings, workdir),
        open_float_runner=lambda: OnnxRunner(export.path), output_steps={}, extra_files=scripts,
        notes=_notes(plan, engine, seconds),
        per_layer=(lambda samples: qdq_layer_drift(export.path, path, tensor_modules(export.path), samples))
        if precision == "int8" else None,
        layer_links=lambda: onnx_links(export.path),
        with_float=(lambda rows: _without_qdq(plan, export, workdir, frozenset(r["tensor"] for r in rows)))
        if precision == "int8" else None,
    )


def _without_qdq(plan: Plan, export: OnnxExport, workdir: Path, tensors: frozenset[str]) -> DeviceModel:
    """The fallback: no Q/DQ on `tensors`, so the ops reading them run in FP16; those ops' modules are named."""
    import dataclasses

    name = step_name({"float32": [{"tensor": t} for t in tensors]})
    device = build_qdq_onnx(plan, export, workdir / f"fallback-{name}", tensors)
    modules = tensor_modules(export.path)
    names = tuple(dict.fromkeys(modules.get(n.output[0]) or n.name for n in _consumer_nodes(export.path, tensors)))
    return dataclasses.replace(device, float_modules=names)


def check_request(plan: Plan) -> None:
    """Options that do not apply to a Jetson target: exit 2 before any work."""
    check_profile(plan.target)
    asked = plan.options.conversion.converter
    if asked not in (None, "auto", plan.target.converter):
        raise UnsupportedError(f"converter {asked} does not apply to {plan.target.name}",
                               hint=f"its converter is {plan.target.converter}: drop --converter")
    if plan.io != "float32":
        raise UnsupportedError(f"io = {plan.io!r} is not available on {plan.target.name}: TensorRT takes float32 I/O "
                               "and quantizes inside the engine", hint="drop --io")


# --- INT8: calibration and Q/DQ ---------------------------------------------------------------------------------------


def quantize_qdq(model: Path, inputs: dict[str, np.ndarray], calibration: Calibration, workdir: Path,
                 float_tensors: frozenset[str] = frozenset()) -> Path:
    """model.qdq.onnx: INT8 weight initializers per channel -> DequantizeLinear, per-tensor INT8 activations
    QuantizeLinear -> DequantizeLinear on the inputs of Conv/Gemm/MatMul, every zero point 0 (TensorRT accepts
    nothing else), biases float; activation ranges from `calibration.method`. The consumers of `float_tensors`
    are left unquantized."""
    from onnxruntime.quantization import quantize_static

    workdir.mkdir(parents=True, exist_ok=True)
    amax = calibrate_amax(model, inputs, calibration)
    overrides = {name: [{"rmin": np.float32(-value), "rmax": np.float32(value)}] for name, value in amax.items()}
    out = workdir / "model.qdq.onnx"
    excluded = _consumers(model, float_tensors)
    with quiet_quantization():
        # quantize_static measures ranges itself: one sample does, as each range it uses comes from `overrides`
        quantize_static(str(model), str(out), SampleReader(inputs, 0, 1), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=False,
                        nodes_to_exclude=excluded,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={
                            "ActivationSymmetric": True, "WeightSymmetric": True,
                            "QuantizeBias": False,  # an INT32 bias DequantizeLinear is not INT8 Q/DQ TensorRT fuses
                            "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
                            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # [K, N] weights: per output column
                            "TensorQuantOverrides": overrides})
    return out


def calibrate_amax(model: Path, inputs: dict[str, np.ndarray], calibration: Calibration) -> dict[str, float]:
    """Per activation that feeds a quantized op, the symmetric range |x| <= amax chosen by the calibration method
    (routes/calibrate.py, the one range implementation every route uses; symmetric, as TensorRT's Q/DQ are)."""
    wanted = _quantized_activations(model)
    collector = RangeCollector(calibration.method, calibration.percentile, symmetric=True)
    # as many samples a pass as fit the memory budget: ResNet-50 keeps 211 MB of activations a sample
    for values in onnx_values(model, inputs, wanted, layer_samples(model, CALIBRATION_CHUNK, minimum=1)):
        collector.collect(values)
    return {name: high for name, (_, high) in collector.ranges().items() if name in wanted}


def _consumers(model: Path, tensors: frozenset[str]) -> list[str]:
    """Names of the quantizable nodes that read any of `tensors`."""
    return [n.name for n in _consumer_nodes(model, tensors)]


def _consumer_nodes(model: Path, tensors: frozenset[str]) -> list:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return [n for n in graph.node if n.op_type in QUANTIZED_OPS and set(n.input) & tensors]


def _quantized_activations(model: Path) -> set[str]:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return {name for node in graph.node if node.op_type in QUANTIZED_OPS for name in node.input
            if name and name not in weights}


# --- FP16: emulation -------------------------------------------------------------------------------------------------


def fp16_copy(model: Path, out: Path) -> Path:
    """A float16 copy with float32 I/O, for onnxruntime to emulate TensorRT's FP16 build: weights and activations
    are rounded to float16 between ops (CPU kernels may still accumulate in float32)."""
    import onnx

    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    onnx.save(convert_float_to_float16(onnx.load(str(model)), keep_io_types=True), str(out))
    return out


# --- running: onnxruntime emulation, or TensorRT where it is ---------------------------------------------------------


def host_tensorrt(script: Path) -> ModuleType | None:
    """The generated build_engine.py as a module when TensorRT, a CUDA binding and a GPU are on this host."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    spec = importlib.util.spec_from_file_location("edgekit_build_engine", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.CUDA_BINDING is None or module.compute_capability() is None:
        return None
    return module


class EngineRunner(Runner):
    """A TensorRT engine built on this host's GPU from the device model, run through build_engine.py's session."""

    where = "host-tensorrt"

    def __init__(self, module: ModuleType, path: Path, bindings: dict) -> None:
        super().__init__([b["model_name"] for b in bindings["inputs"]], [b["model_name"] for b in bindings["outputs"]])
        self.bindings = bindings
        self.session = module.EngineSession(module.build_engine(Path(path)))

    def _run_one(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run({b["device_name"]: inputs[b["model_name"]] for b in self.bindings["inputs"]})
        return {b["model_name"]: outputs[b["device_name"]] for b in self.bindings["outputs"]}

    def close(self) -> None:
        self.session.close()


def _device_runner(precision: str, engine: ModuleType | None, bindings: dict, workdir: Path):
    if engine is not None:
        return lambda path: EngineRunner(engine, path, bindings)
    if precision == "fp16":
        return lambda path: OnnxRunner(fp16_copy(path, workdir / "model.fp16-emulation.onnx"))
    # INT8: the Q/DQ graph as written where onnxruntime's fused kernels would saturate (runners/onnxrt.py)
    return lambda path: OnnxRunner(path, optimize=not (precision == "int8" and saturating_host()))


def _runtime(plan: Plan, engine: ModuleType | None) -> dict:
    import onnxruntime

    profile, precision = plan.target.tensorrt, plan.target.precision.upper()
    if engine is not None:
        version = engine.trt.__version__
        where = f"tensorrt-gpu on this host (compute capability {engine.compute_capability()})"
    else:
        version = f"{profile.min_version}-{profile.max_version}"
        where = f"onnxruntime-cpu (TensorRT {precision} emulation)"
    quantized = plan.target.precision == "int8"
    return {"name": "tensorrt", "version": version, "where": where,
            "converter": "onnxruntime.quantization" if quantized else None,
            "converter_version": onnxruntime.__version__ if quantized else None}


def _notes(plan: Plan, engine: ModuleType | None, seconds: float) -> list[str]:
    notes = []
    capability = engine.compute_capability() if engine is not None else None
    if capability and capability != plan.target.tensorrt.compute_capability:
        notes.append(f"measured with TensorRT on this host's GPU (compute capability {capability}), not on the "
                     f"target's ({plan.target.tensorrt.compute_capability}): kernels differ, numbers are indicative")
    return notes


def _check_io(path: Path, export: OnnxExport) -> None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    found = ([v.name for v in graph.input if v.name not in weights], [v.name for v in graph.output])
    expected = ([s.name for s in export.inputs], [s.name for s in export.outputs])
    if found != expected:
        raise ConversionError(f"{path.name} has I/O {found}, the export {expected}", hint="report this model")
