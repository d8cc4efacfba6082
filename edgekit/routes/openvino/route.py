"""The OpenVINO route: Intel (and ARM) edge CPUs. The float ONNX export becomes an OpenVINO IR (model.xml +
model.bin); INT8 is NNCF post-training quantization with the calibration data.

NNCF's defaults lose accuracy on small batch-1 calibration sets: its activation ranges average per-sample min/max
(21.2 dB on the digits CNN) and its fast bias correction shifts the first layer's bias by up to 0.15. edgekit asks
for global min/max ranges (or quantiles, `--calibration-method percentile`) and full bias correction: 43.6 dB.
Per-layer drift reads every activation FakeQuantize in the OpenVINO runtime itself (extra outputs on the IR).
`--fallback auto` keeps the most sensitive of them out of INT8 through NNCF's IgnoredScope, one at a time; when
that is not enough, NNCF's own accuracy control has the last word. Drift is measured in the OpenVINO runtime on
this x86 host in float32 precision: a real runtime on real hardware.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.measure.groups import onnx_links
from edgekit.routes import Route
from edgekit.routes.device import WEIGHT_ONLY, step_name

METHODS = {"minmax": "MINMAX", "percentile": "QUANTILE"}  # NNCF's range estimator sets


class OpenVinoRoute(Route):
    name = "openvino"
    runtime = "openvino"
    extra = "openvino"
    requires = ("openvino", "nncf")
    emulators = ("host", "arm64")  # for its arm64 targets: OpenVINO's ARM CPU plugin in the ARM64 emulator

    methods = tuple(METHODS)
    converted_by = "openvino and NNCF"

    layer_precisions = ("int8", "float32", WEIGHT_ONLY)

    def back_off(self, target) -> str | None:
        """INT8 weights with float compute: NNCF's weight compression (INT8, symmetric per channel)."""
        return WEIGHT_ONLY if target.precision == "int8" else None

    def build(self, plan, export, workdir: Path, controlled: bool = False,
              float_tensors: frozenset[str] = frozenset(), weight_tensors: frozenset[str] = frozenset()):
        """`float_tensors`: activations kept out of INT8 through NNCF's IgnoredScope (their producers and readers
        run in float): the per-layer fallback; `weight_tensors`: the same, with those ops' weights compressed to
        INT8 by nncf.compress_weights (the back-off). `controlled`: quantize with NNCF's accuracy control instead
        (the fallback when the per-layer one is not enough), which keeps the quantizers that cost most accuracy in
        float until the eval drop is within --max-drop."""
        import dataclasses

        import openvino as ov

        from edgekit.measure.layers import touching
        from edgekit.routes.device import DeviceModel, onnx_bindings
        from edgekit.routes.openvino.layers import openvino_layer_drift
        from edgekit.routes.openvino.runner import OpenVinoRunner
        from edgekit.runners.onnxrt import OnnxRunner
        from edgekit.transform.export import tensor_modules

        workdir.mkdir(parents=True, exist_ok=True)
        modules, kept = tensor_modules(export.path), touching(export.path, float_tensors | weight_tensors)
        in_float = [n.name for n in touching(export.path, float_tensors)]
        float_modules = tuple(dict.fromkeys(modules.get(n.output[0]) or n.name for n in kept))
        with no_telemetry():
            model = ov.convert_model(str(export.path))
            quantized = plan.target.precision == "int8"
            if quantized and controlled:
                model, float_ops = quantize_controlled(plan, model)
                float_modules = module_names(export.path, float_ops)
            elif quantized:
                model = quantize(plan, model, [n.name for n in kept])
                if weight_tensors:
                    model = compress_weights(model, in_float)
            xml = workdir / "model.xml"
            ov.save_model(model, str(xml), compress_to_fp16=False)  # the default would halve fp32 weights
        device = DeviceModel(
            path=xml, bundle_name="model.xml", float_path=export.path, runtime=_runtime(quantized),
            bindings=onnx_bindings(export), open_runner=OpenVinoRunner,
            open_float_runner=lambda: OnnxRunner(export.path), extra_files={"model.bin": xml.with_suffix(".bin")},
            model_files=("model.bin",), float_modules=float_modules,
        )
        if not quantized or controlled:
            return device

        def with_precisions(moves: dict[str, list[dict]]) -> DeviceModel:
            tensors = {p: frozenset(r["tensor"] for r in rows) for p, rows in moves.items()}
            return self.build(plan, export, workdir / f"fallback-{step_name(moves)}",
                              float_tensors=tensors.get("float32", frozenset()),
                              weight_tensors=tensors.get(WEIGHT_ONLY, frozenset()))

        return dataclasses.replace(
            device, per_layer=lambda samples: openvino_layer_drift(export.path, xml, modules, samples),
            layer_links=lambda: onnx_links(export.path), with_precisions=with_precisions,
            with_float=lambda rows: with_precisions({"float32": rows}),
            own_fallback=lambda: self.build(plan, export, workdir / "controlled", controlled=True))


def _samples(data, limit: int | None = None) -> list[dict]:
    inputs = data.inputs if limit is None else data.take(slice(0, limit)).inputs
    return [{name: array[i:i + 1] for name, array in inputs.items()} for i in range(len(next(iter(inputs.values()))))]


def _settings(plan) -> dict:
    """NNCF's arguments: global ranges, full bias correction (none after a fine-tune: `--qat` trained the biases
    for the simulation's rounding), the PERFORMANCE preset."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ranges = getattr(RangeEstimatorParametersSet, METHODS[plan.options.calibration.method])
    return {"preset": nncf.QuantizationPreset.PERFORMANCE, "fast_bias_correction": False,
            "advanced_quantization_parameters": AdvancedQuantizationParameters(
                activations_range_estimator_params=ranges, disable_bias_correction=plan.fine_tuned)}


def quantize(plan, model, ignored: list[str] | tuple[str, ...] = ()):
    """nncf.quantize with the calibration data (see the module docstring); the ops made from the `ignored` ONNX
    nodes (OpenVINO names them after the node, "node_Conv_19/WithoutBiases") stay float."""
    import re

    import nncf

    from edgekit.routes.calibrate import quiet_quantization

    samples = _samples(plan.calibration, plan.options.calibration.max_samples)
    settings = _settings(plan)
    settings["advanced_parameters"] = settings.pop("advanced_quantization_parameters")
    if ignored:
        patterns = [f"^{re.escape(name)}(/.*)?$" for name in ignored]
        settings["ignored_scope"] = nncf.IgnoredScope(patterns=patterns, validate=False)
    with quiet_quantization():  # NNCF draws progress bars on stdout, where `--json` writes the report
        return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), **settings)


def compress_weights(model, in_float: list[str]):
    """The weights NNCF's quantization left in float (the ops it ignored) compressed to INT8, symmetric per output
    channel, by nncf.compress_weights (it leaves the ops quantize already quantized alone), except those of the ops
    made from the `in_float` ONNX nodes."""
    import re

    import nncf

    from edgekit.routes.calibrate import quiet_quantization

    ignored = nncf.IgnoredScope(patterns=[f"^{re.escape(name)}(/.*)?$" for name in in_float], validate=False)
    with quiet_quantization():
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=ignored)


def quantize_controlled(plan, model) -> tuple[object, tuple[str, ...]]:
    """nncf.quantize_with_accuracy_control on the eval data: top-1 accuracy against the labels (agreement with
    the float model without labels), absolute drop within --max-drop; returns the model and the ops it left float."""
    import nncf
    import numpy as np
    import openvino as ov

    from edgekit.routes.calibrate import quiet_quantization

    evaluation = plan.evaluation
    labels = evaluation.labels
    if labels is None:  # agreement with the float model's own predictions
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        labels = np.array([int(np.argmax(compiled(sample)[0])) for sample in _samples(evaluation)])

    def validate(compiled, items) -> tuple[float, list[float]]:
        hits = [float(np.argmax(compiled(sample)[0]) == label) for sample, label in items]
        return float(np.mean(hits)), hits

    items = list(zip(_samples(evaluation), labels.tolist()))
    before = quantized_ops(quantize(plan, model))
    with quiet_quantization():
        controlled = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(_samples(plan.calibration, plan.options.calibration.max_samples)),
            nncf.Dataset(items), validate, max_drop=plan.options.gate.max_drop / 100.0,
            drop_type=nncf.DropType.ABSOLUTE, subset_size=plan.options.calibration.max_samples, **_settings(plan))
    return controlled, tuple(sorted(before - quantized_ops(controlled)))


def module_names(onnx_path: Path, ops: tuple[str, ...]) -> tuple[str, ...]:
    """OpenVINO op names ("node_Conv_19/WithoutBiases") as the PyTorch modules of the ONNX nodes they came from."""
    import onnx

    from edgekit.transform.export import tensor_modules

    if not ops:
        return ()
    modules = tensor_modules(onnx_path)
    outputs = {n.name: n.output[0] for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    names = [modules.get(outputs.get(op.split("/")[0], "")) or op for op in ops]
    return tuple(dict.fromkeys(names))


def quantized_ops(model) -> set[str]:
    """Names of the ops that read a FakeQuantize (directly or through a weight decompression chain)."""
    found = set()
    for op in model.get_ops():
        for value in op.inputs():
            if value.get_source_output().get_node().get_type_name() == "FakeQuantize":
                found.add(op.get_friendly_name())
    return found


def no_telemetry():
    """NNCF and OpenVINO's converter send usage telemetry unless the environment says CI: never from edgekit."""
    from edgekit.utils.environ import temporary_environ

    return temporary_environ({"CI": "true", "NNCF_CI": "1"})


def _runtime(quantized: bool) -> dict:
    import nncf
    import openvino as ov

    return {"name": "openvino", "version": ov.__version__.split("-")[0], "where": "host-x86_64 (openvino CPU, f32)",
            "converter": "nncf" if quantized else "openvino.convert_model",
            "converter_version": nncf.__version__ if quantized else ov.__version__.split("-")[0]}


ROUTE = OpenVinoRoute()
