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
from edgekit.routes.device import step_name

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

    def build(self, plan, export, workdir: Path, float_tensors: frozenset[str] = frozenset()):
        """`float_tensors`: activations kept out of INT8 (their producers and readers run in float): fallback."""
        import dataclasses

        from edgekit.measure.layers import qdq_layer_drift, touching
        from edgekit.routes.device import DeviceModel, onnx_bindings
        from edgekit.runners.onnxrt import OnnxRunner
        from edgekit.transform.export import tensor_modules

        workdir.mkdir(parents=True, exist_ok=True)
        quantized, kept = plan.target.precision == "int8", touching(export.path, float_tensors)
        onnx_path = quantize(plan, export, workdir / "model.qdq.onnx", kept) if quantized else export.path
        files = to_ort(onnx_path, workdir / "ort")
        modules = tensor_modules(export.path)
        device = DeviceModel(
            path=files["model.ort"], bundle_name=BUNDLE_NAME, float_path=export.path,
            runtime=_runtime(quantized), bindings=onnx_bindings(export),
            open_runner=OnnxRunner, open_float_runner=lambda: OnnxRunner(export.path),
            extra_files={"model.onnx": onnx_path,
                         "model.required_operators.config": files["model.required_operators.config"]},
            float_modules=tuple(dict.fromkeys(modules.get(n.output[0]) or n.name for n in kept)),
        )
        if not quantized:
            return device
        return dataclasses.replace(
            device, per_layer=lambda samples: qdq_layer_drift(export.path, onnx_path, modules, samples),
            layer_links=lambda: onnx_links(export.path),
            with_float=lambda rows: self.build(plan, export, workdir / f"fallback-{step_name({'float32': rows})}",
                                               frozenset(r["tensor"] for r in rows)))


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


def _runtime(quantized: bool) -> dict:
    import onnxruntime

    return {"name": "onnxruntime", "version": onnxruntime.__version__, "where": "host-x86_64 (onnxruntime CPU)",
            "converter": "onnxruntime.quantization" if quantized else "onnxruntime.tools (ORT format)",
            "converter_version": onnxruntime.__version__}


ROUTE = OnnxRuntimeRoute()
