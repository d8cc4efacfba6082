"""The OpenVINO route: Intel (and ARM) edge CPUs. The float ONNX export becomes an OpenVINO IR (model.xml +
model.bin); INT8 is NNCF post-training quantization with the calibration data.

NNCF's defaults lose accuracy on small batch-1 calibration sets: its activation ranges average per-sample min/max
(21.2 dB on the digits CNN) and its fast bias correction shifts the first layer's bias by up to 0.15. edgekit asks
for global min/max ranges (or quantiles, `--calibration-method percentile`) and full bias correction: 43.6 dB.
`--fallback auto` keeps the most sensitive layers out of INT8 through NNCF's own IgnoredScope. Drift is measured in
the OpenVINO runtime on this x86 host in float32 precision: a real runtime on real hardware.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from edgekit.routes import Route

METHODS = {"minmax": "MINMAX", "percentile": "QUANTILE"}  # NNCF's range estimator sets


class OpenVinoRoute(Route):
    name = "openvino"
    runtime = "openvino"
    extra = "openvino"
    requires = ("openvino", "nncf")

    def check(self, plan) -> None:
        from edgekit.errors import UnsupportedError

        super().check(plan)
        if plan.options.converter not in (None, "auto", plan.target.converter):
            raise UnsupportedError(f"converter {plan.options.converter} does not apply to {plan.target.name}",
                                   hint="drop --converter: this route converts with openvino and NNCF")
        if plan.io != "float32":
            raise UnsupportedError(f"io = {plan.io!r} is not available on {plan.target.name}", hint="drop --io")
        if plan.target.precision not in ("int8", "fp32"):
            raise UnsupportedError(f"precision {plan.target.precision} has no openvino route",
                                   hint="use an -int8 or -fp32 openvino target")
        if plan.target.precision == "int8" and plan.options.calibration.method not in METHODS:
            raise UnsupportedError(f"--calibration-method {plan.options.calibration.method} is not available on "
                                   "route openvino", hint=f"use one of: {', '.join(METHODS)}")

    def build(self, plan, export, workdir: Path, ignored: tuple[str, ...] = ()):
        import openvino as ov

        from edgekit.device import DeviceModel, onnx_bindings
        from edgekit.runners.onnxrt import OnnxRunner
        from edgekit.runners.openvino import OpenVinoRunner

        workdir.mkdir(parents=True, exist_ok=True)
        with no_telemetry():
            model = ov.convert_model(str(export.path))
            quantized = plan.target.precision == "int8"
            if quantized:
                model = quantize(plan, model, ignored)
            xml = workdir / "model.xml"
            ov.save_model(model, str(xml), compress_to_fp16=False)  # the default would halve fp32 weights
        return DeviceModel(
            path=xml, bundle_name="model.xml", float_path=export.path, runtime=_runtime(quantized),
            bindings=onnx_bindings(export), open_runner=OpenVinoRunner,
            open_float_runner=lambda: OnnxRunner(export.path), extra_files={"model.bin": xml.with_suffix(".bin")},
            model_files=("model.bin",),
            notes=[] if not quantized else ["per-layer drift is not measured on route openvino yet"],
            float_modules=tuple(ignored),
        )


def quantize(plan, model, ignored: tuple[str, ...]):
    """nncf.quantize with global ranges and full bias correction (see the module docstring)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    calibration = plan.options.calibration
    inputs = plan.calibration.take(slice(0, calibration.max_samples)).inputs
    names, count = list(inputs), len(next(iter(inputs.values())))
    samples = [{name: inputs[name][i:i + 1] for name in names} for i in range(count)]
    from edgekit.steps.calibrate import quiet_quantization

    ranges = getattr(RangeEstimatorParametersSet, METHODS[calibration.method])
    with quiet_quantization():  # NNCF draws progress bars on stdout, where `--json` writes the report
        return nncf.quantize(model, nncf.Dataset(samples), subset_size=count,
                             preset=nncf.QuantizationPreset.PERFORMANCE, fast_bias_correction=False,
                             ignored_scope=nncf.IgnoredScope(names=list(ignored)),
                             advanced_parameters=AdvancedQuantizationParameters(
                                 activations_range_estimator_params=ranges))


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """NNCF and OpenVINO's converter send usage telemetry unless the environment says CI: never from edgekit."""
    saved = {key: os.environ.get(key) for key in ("CI", "NNCF_CI")}
    os.environ.update({"CI": "true", "NNCF_CI": "1"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _runtime(quantized: bool) -> dict:
    import nncf
    import openvino as ov

    return {"name": "openvino", "version": ov.__version__.split("-")[0], "where": "host-x86_64 (openvino CPU, f32)",
            "converter": "nncf" if quantized else "openvino.convert_model",
            "converter_version": nncf.__version__ if quantized else ov.__version__.split("-")[0]}


ROUTE = OpenVinoRoute()
