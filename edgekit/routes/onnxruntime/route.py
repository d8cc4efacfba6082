"""The ONNX Runtime route: ONNX Runtime Mobile on ARM64 phones and boards.

INT8 is a static QDQ ONNX from onnxruntime.quantization, in the layout ORT's mobile docs recommend for its CPU and
XNNPACK kernels: INT8 weights, symmetric per channel; UINT8 activations, asymmetric per tensor; every op
onnxruntime quantizes in QDQ. The model ships as an ORT-format file (`model.ort`, what an app built with ONNX
Runtime Mobile loads), converted with the "Fixed" optimisation style for ARM, plus the operator list a reduced
mobile build needs (`model.required_operators.config`) and the QDQ ONNX itself. Drift is measured on `model.ort`
itself, in onnxruntime on the host and, once `edgekit emulator setup` ran, in onnxruntime's aarch64 build inside
the ARM64 emulator (the same CPU kernels an ONNX Runtime Mobile app runs without an execution provider).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgekit.measure.groups import onnx_links
from edgekit.routes import Route
from edgekit.routes.device import WEIGHT_ONLY, step_name

BUNDLE_NAME = "model.ort"
METHODS = {"minmax": "MinMax", "percentile": "Percentile"}  # onnxruntime's calibrators that return real ranges here


class OnnxRuntimeRoute(Route):
    name = "onnxruntime"
    runtime = "onnxruntime"
    extra = "onnxruntime"  # onnxruntime is also one of edgekit's own dependencies
    requires = ("onnxruntime",)
    emulators = ("host", "arm64")  # the emulator's guest runs the .ort in onnxruntime's aarch64 build

    methods = tuple(METHODS)
    converted_by = "onnxruntime.quantization"

    layer_precisions = ("int8", "float32", WEIGHT_ONLY)

    def qat_quantizer(self, target):
        """The XNNPACK patterns plus the ops onnxruntime's QDQ quantizer rounds besides them (routes/qat.py)."""
        from edgekit.routes.qat import onnxruntime_qat

        return onnxruntime_qat()

    def back_off(self, target) -> str | None:
        """INT8 weights with float compute: a DequantizeLinear on each INT8 weight, the op in float."""
        return WEIGHT_ONLY if target.precision == "int8" else None

    def build(self, plan, export, workdir: Path, float_tensors: frozenset[str] = frozenset(),
              weight_tensors: frozenset[str] = frozenset()):
        """`float_tensors`: activations kept out of INT8 (their producers and readers run in float); `weight_tensors`:
        the same, but those ops' weights stay INT8 (the back-off): fallback."""
        import dataclasses

        from edgekit.measure.layers import qdq_layer_drift, touching
        from edgekit.routes.device import DeviceModel, onnx_bindings
        from edgekit.runners.onnxrt import OnnxRunner, saturating_host
        from edgekit.transform.export import tensor_modules

        workdir.mkdir(parents=True, exist_ok=True)
        quantized = plan.target.precision == "int8"
        kept, in_float = touching(export.path, float_tensors | weight_tensors), touching(export.path, float_tensors)
        onnx_path = quantize(plan, export, workdir / "model.qdq.onnx", kept) if quantized else export.path
        if quantized:  # the export itself is never rewritten
            floats = {n.name for n in in_float}
            int8_weights(onnx_path, [n.name for n in kept if n.name not in floats])
        files = to_ort(onnx_path, workdir / "ort")
        modules = tensor_modules(export.path)
        as_written = quantized and saturating_host()  # model.ort's fused INT8 kernels would saturate on this host
        device = DeviceModel(
            path=files["model.ort"], bundle_name=BUNDLE_NAME, float_path=export.path,
            runtime=_runtime(quantized, as_written), bindings=onnx_bindings(export),
            open_runner=(lambda _: OnnxRunner(onnx_path, optimize=False)) if as_written else OnnxRunner,
            open_float_runner=lambda: OnnxRunner(export.path), notes=[AS_WRITTEN] if as_written else [],
            extra_files={"model.onnx": onnx_path,
                         "model.required_operators.config": files["model.required_operators.config"]},
            float_modules=tuple(dict.fromkeys(modules.get(n.output[0]) or n.name for n in kept)),
        )
        if not quantized:
            return device

        def with_precisions(moves: dict[str, list[dict]]) -> DeviceModel:
            tensors = {p: frozenset(r["tensor"] for r in rows) for p, rows in moves.items()}
            return self.build(plan, export, workdir / f"fallback-{step_name(moves)}",
                              tensors.get("float32", frozenset()), tensors.get(WEIGHT_ONLY, frozenset()))

        return dataclasses.replace(
            device, per_layer=lambda samples: qdq_layer_drift(export.path, onnx_path, modules, samples),
            layer_links=lambda: onnx_links(export.path), with_precisions=with_precisions,
            with_float=lambda rows: with_precisions({"float32": rows}))


def quantize(plan, export, out: Path, excluded: list) -> Path:
    """Static QDQ INT8 with onnxruntime's own calibrator on the calibration data; `excluded` nodes stay float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgekit.routes.calibrate import SampleReader, quiet_quantization

    calibration = plan.options.calibration
    inputs = plan.calibration.take(slice(0, calibration.max_samples)).inputs
    count = len(next(iter(inputs.values())))
    with quiet_quantization():
        quantize_static(str(export.path), str(out), SampleReader(inputs, 0, count), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                        nodes_to_exclude=[n.name for n in excluded],
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod,
                                                                              METHODS[calibration.method]),
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                       "CalibPercentile": float(calibration.percentile)})
    return out


WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0, "MatMul": 1}  # the weight's output-channel axis (Gemm: transB)


def int8_weights(path: Path, names: list[str]) -> None:
    """The weights of the float ops `names` (Conv, Gemm, MatMul with a constant weight) in INT8, in place: symmetric
    per output channel, scale by onnxruntime.quantization's own helper, behind a DequantizeLinear. onnxruntime keeps
    a DequantizeLinear of a constant as it is (its constant folding skips them): the file holds INT8 weights, and
    the op computes in float."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.quant_utils import quantize_data

    if not names:
        return
    model = onnx.load(str(path))
    graph, wanted = model.graph, set(names)
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    added = []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.name in wanted and len(node.input) > 1 else None
        axis = WEIGHT_AXIS.get(node.op_type)
        if weight is None or axis is None or weight.data_type != TensorProto.FLOAT or readers[weight.name] != 1:
            continue
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
            axis = 1  # B is (K, N): its output channels are its columns
        values = numpy_helper.to_array(weight)
        if values.ndim < 2:
            continue
        rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        per_channel = [quantize_data(row, TensorProto.INT8, True) for row in rows]
        scales = np.array([float(np.asarray(q[1]).reshape(-1)[0]) for q in per_channel], np.float32)
        quantized = np.moveaxis(np.stack([np.asarray(q[2]).reshape(-1) for q in per_channel]).reshape(
            np.moveaxis(values, axis, 0).shape), 0, axis).astype(np.int8)
        base = weight.name
        graph.initializer.remove(weight)
        graph.initializer.extend([numpy_helper.from_array(quantized, f"{base}_int8"),
                                  numpy_helper.from_array(scales, f"{base}_int8_scale"),
                                  numpy_helper.from_array(np.zeros_like(scales, np.int8), f"{base}_int8_zero_point")])
        added.append(helper.make_node("DequantizeLinear", [f"{base}_int8", f"{base}_int8_scale",
                                                           f"{base}_int8_zero_point"], [base],
                                      name=f"{base}_DequantizeLinear", axis=axis))
    nodes = [*added, *graph.node]  # before every reader: the graph stays topologically sorted
    graph.ClearField("node")
    graph.node.extend(nodes)
    onnx.save(model, str(path))


# onnxruntime's converter, run as `python -m onnxruntime.tools.convert_onnx_models_to_ort` would, except that the
# package's __init__ imports torch when it is installed (for a helper the converter never calls): seconds per call
TO_ORT = ("import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = 'convert_onnx_models_to_ort'; "
          "runpy.run_module('onnxruntime.tools.convert_onnx_models_to_ort', run_name='__main__', alter_sys=True)")


def to_ort(model: Path, folder: Path) -> dict[str, Path]:
    """model.ort and its required-operators config, from onnxruntime's own converter (a child process: it prints)."""
    from edgekit.errors import ConversionError
    from edgekit.utils.children import run_child

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "model.onnx"
    source.write_bytes(model.read_bytes())
    command = [sys.executable, "-c", TO_ORT, str(source), "--output_dir", str(folder / "out"), "--optimization_style",
               "Fixed", "--target_platform", "arm"]
    done = run_child(command, 600, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    files = {"model.ort": folder / "out" / "model.ort",
             "model.required_operators.config": folder / "out" / "model.required_operators.config"}
    if done.returncode != 0 or not all(p.is_file() for p in files.values()):
        tail = " | ".join(done.stdout.strip().splitlines()[-3:])
        raise ConversionError(f"ONNX -> ORT format conversion failed: {tail}", hint="report this model")
    config = files["model.required_operators.config"]  # its header names the work folder: name the bundle file
    config.write_text("".join(line if not line.startswith("# - ") else "# - model.ort\n"
                              for line in config.read_text().splitlines(keepends=True)))
    return files


AS_WRITTEN = ("host: this x86-64 CPU has no VNNI, where onnxruntime's U8S8 integer kernels saturate (an ARM64 "
              "device's do not): drift measured on the bundle's Q/DQ model.onnx computed as written (each Q/DQ in "
              "float), not on model.ort's fused kernels; the arm64 emulator runs model.ort")


def _runtime(quantized: bool, as_written: bool = False) -> dict:
    import onnxruntime

    where = "host-x86_64 (onnxruntime CPU, the Q/DQ ONNX as written)" if as_written else "host-x86_64 (onnxruntime CPU)"
    return {"name": "onnxruntime", "version": onnxruntime.__version__, "where": where,
            "converter": "onnxruntime.quantization" if quantized else "onnxruntime.tools (ORT format)",
            "converter_version": onnxruntime.__version__}


ROUTE = OnnxRuntimeRoute()
