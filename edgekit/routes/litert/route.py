"""The LiteRT route: TFLite for Android through onnx2tf or litert-torch (`--converter`, or `auto`'s measured
choice), drift measured in LiteRT on the host and in the rootless ARM64 emulator."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgekit.errors import UnsupportedError
from edgekit.measure.size import gzip_size
from edgekit.routes import Route, check_method
from edgekit.routes.device import WEIGHT_ONLY
from edgekit.transform.export import export_onnx


class LiteRTRoute(Route):
    name = "litert"
    runtime = "litert"
    extra = "android"  # or litert-torch: each converter names its own extra when it is missing
    requires = ("ai_edge_litert|tflite_runtime|tensorflow",)
    emulators = ("host", "arm64")
    precisions = ("fp32", "fp16", "int8", "int16x8", "dynamic-int8", "w4")
    layer_precisions = ("int8", "int16x8", "float32")
    weight_methods = ("minmax", "mse", "octav")  # ai-edge-quantizer's algorithms
    converters = ("onnx2tf", "litert-torch", "auto")
    reads = (".tflite",)

    def check_request(self, plan) -> None:
        """The converters' own checks: two converters, int8 I/O and every calibration method are offered."""
        from edgekit.routes.litert.choose import check_converter

        check_method(plan, self.methods, self.name, self.weight_methods)
        if plan.io == "int8" and plan.target.precision != "int8":
            raise UnsupportedError(f"--io int8 (full-integer I/O) needs an INT8 target; {plan.target.name} is "
                                   f"{plan.target.precision}", hint="drop --io, or build android-arm64-int8")
        check_converter(plan)

    def qat_quantizer(self, target):
        """ai-edge-quantizer gives every tensor an INT8 grid, not only the XNNPACK patterns' (routes/qat.py); the
        norms as the target's converter lowers them (`auto`'s choice is not known before the build: the default's)."""
        from edgekit.routes.qat import every_tensor_qat

        converter = getattr(target, "converter", None)
        return every_tensor_qat(converter if converter in ("onnx2tf", "litert-torch") else "onnx2tf")

    def ladder(self, target) -> tuple[str, ...]:
        """An INT8 layer goes to 16x8 first (INT8's weights, INT16 activations), then float; a layer of the other
        quantized precisions goes to float."""
        return ("int16x8", "float32") if target.precision == "int8" else ("float32",)

    def back_off(self, target) -> str | None:
        """INT8 weights with float compute: the size of INT8, the activations of float."""
        return WEIGHT_ONLY if target.precision == "int8" else None

    def build(self, plan, export, workdir: Path):
        from edgekit.routes.litert.choose import build_android

        return build_android(plan, export, workdir)

    def inspect(self, path: Path) -> dict:
        from edgekit.routes.litert.inspect import inspect_tflite

        return inspect_tflite(path)

    def float_gzip_bytes(self, plan, workdir: Path) -> int:
        """The float32 .tflite of the original model, converted with onnx2tf on 8 calibration samples."""
        from edgekit.routes.litert import onnx2tf

        export = export_onnx(plan.model, plan.inputs, workdir / "baseline.onnx")
        fp32 = dataclasses.replace(plan.target, precision="fp32", io="float32")
        calibration = plan.calibration.take(slice(0, 8)).inputs
        return gzip_size(onnx2tf.convert(export, calibration, fp32, "float32", workdir / "baseline").float32)


ROUTE = LiteRTRoute()
