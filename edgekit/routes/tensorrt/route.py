"""The TensorRT route: an explicit Q/DQ ONNX (INT8) or the float ONNX (FP16) with engine build scripts for the
Jetson, drift measured in onnxruntime as a TensorRT emulation (real TensorRT where a GPU and TensorRT are present)."""

from __future__ import annotations

from pathlib import Path

from edgekit.routes import Route, check_method


class TensorRTRoute(Route):
    name = "tensorrt"
    runtime = "tensorrt"
    extra = None  # onnxruntime is one of edgekit's own dependencies: nothing extra is needed to build
    requires = ("onnxruntime",)
    layer_precisions = ("int8", "fp16")  # a layer without Q/DQ runs in FP16 in the engine (--fp16 --int8)
    fallback_precision = "fp16"

    def check_request(self, plan) -> None:
        """Its own checks: the [tensorrt] profile, the converter and float32 I/O (routes/tensorrt/build.py)."""
        from edgekit.routes.tensorrt.build import check_request

        check_method(plan, self.methods, self.name, self.weight_methods)
        check_request(plan)

    def build(self, plan, export, workdir: Path):
        from edgekit.routes.tensorrt.build import build_qdq_onnx

        return build_qdq_onnx(plan, export, workdir)

    def qat_quantizer(self, target):
        """TensorRT's INT8 activations are symmetric (ActivationSymmetric in routes/tensorrt/build.py), on the inputs
        of its matrix ops alone."""
        from edgekit.routes.qat import weighted_inputs_qat

        return weighted_inputs_qat()


ROUTE = TensorRTRoute()
